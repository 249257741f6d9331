//! OTLP transports: gRPC (tonic) and HTTP/protobuf (reqwest). One call = one attempt; the
//! pipeline owns retries.
use std::fmt;
use std::io::Write as _;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::config::{Compression, ExportConfig};

const USER_AGENT: &str = concat!("tracer/", env!("CARGO_PKG_VERSION"));

/// A failed attempt.
#[derive(Debug)]
pub struct ExportError {
    /// Worth trying again (transient: unreachable, overloaded, timed out).
    pub retryable: bool,
    /// Server-requested delay (HTTP `Retry-After`).
    pub retry_after: Option<Duration>,
    pub message: String,
}

impl fmt::Display for ExportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl ExportError {
    fn new(retryable: bool, message: String) -> Self {
        Self {
            retryable,
            retry_after: None,
            message,
        }
    }
}

/// A successful attempt; `rejected` spans were refused by the receiver (partial success).
#[derive(Debug, Default)]
pub struct Sent {
    pub rejected: u64,
    pub message: String,
}

fn from_response(r: ExportTraceServiceResponse) -> Sent {
    match r.partial_success {
        Some(p) => Sent {
            rejected: u64::try_from(p.rejected_spans).unwrap_or(0),
            message: p.error_message,
        },
        None => Sent::default(),
    }
}

/// Appends the messages of `e`'s chain to `s` (`: `-separated), skipping repeats.
fn append_chain(s: &mut String, mut e: Option<&dyn std::error::Error>) {
    while let Some(err) = e {
        let m = err.to_string();
        if !m.is_empty() && !s.contains(&m) {
            if !s.is_empty() {
                s.push_str(": ");
            }
            s.push_str(&m);
        }
        e = err.source();
    }
}

/// An error and its sources, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = String::new();
    append_chain(&mut s, Some(e));
    s
}

/// The gRPC channel of both OTLP exporters (spans and metrics): connects lazily (on first
/// export) and reconnects by itself; timeouts, keep-alive, TLS with the Mozilla roots for
/// `https://`. Must be called inside a tokio runtime.
pub fn grpc_channel(url: &str, cfg: &ExportConfig) -> anyhow::Result<Channel> {
    let mut ep = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("OTLP/gRPC endpoint {url:?}"))?
        .user_agent(USER_AGENT)
        .context("user agent")?
        .connect_timeout(cfg.timeout)
        .timeout(cfg.timeout)
        .tcp_nodelay(true)
        // Notice dead connections (NAT/conntrack drops) while idle.
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(cfg.timeout.min(Duration::from_secs(20)))
        .keep_alive_while_idle(false);
    if url
        .get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case("https://"))
    {
        ep = ep
            .tls_config(ClientTlsConfig::new().with_webpki_roots())
            .context("OTLP/gRPC TLS")?;
    }
    Ok(ep.connect_lazy())
}

/// `OTEL_EXPORTER_OTLP_HEADERS` as gRPC metadata; a header gRPC cannot carry is logged and
/// left out.
pub fn grpc_metadata(cfg: &ExportConfig) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    for (k, v) in &cfg.headers {
        match (
            k.parse::<AsciiMetadataKey>(),
            v.parse::<AsciiMetadataValue>(),
        ) {
            (Ok(k), Ok(v)) => {
                metadata.insert(k, v);
            }
            _ => tracing::warn!("OTLP/gRPC: header {k:?} is not valid gRPC metadata; ignored"),
        }
    }
    metadata
}

/// The gRPC status codes OTLP says to retry (OTLP specification, "Failures").
pub fn grpc_retryable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Cancelled
            | DeadlineExceeded
            | ResourceExhausted
            | Aborted
            | OutOfRange
            | Unavailable
            | DataLoss
    )
}

/// The OTLP trace service's one method.
const TRACE_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// OTLP/gRPC for spans. The request goes out as bytes encoded once by the caller
/// ([`super::otlp_wire::TraceEncoder`]), so a retry re-sends them as they are instead of copying every span
/// of the batch again; the response is decoded with prost.
pub struct GrpcTransport {
    grpc: tonic::client::Grpc<Channel>,
    metadata: MetadataMap,
}

impl GrpcTransport {
    /// Must be called inside a tokio runtime. Connects lazily (on first export), and
    /// reconnects by itself.
    pub fn new(url: &str, cfg: &ExportConfig) -> anyhow::Result<Self> {
        let mut grpc = tonic::client::Grpc::new(grpc_channel(url, cfg)?)
            .max_decoding_message_size(4 << 20)
            .max_encoding_message_size(usize::MAX)
            .accept_compressed(CompressionEncoding::Gzip);
        if cfg.compression == Compression::Gzip {
            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
        }
        Ok(Self {
            grpc,
            metadata: grpc_metadata(cfg),
        })
    }

    /// One attempt with `body`, an `ExportTraceServiceRequest` encoded by the caller.
    pub async fn send(&mut self, body: Bytes, timeout: Duration) -> Result<Sent, ExportError> {
        let mut request = tonic::Request::new(body);
        *request.metadata_mut() = self.metadata.clone();
        request.set_timeout(timeout);
        let grpc = &mut self.grpc;
        let call = async move {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(format!("not ready: {e}")))?;
            grpc.unary(
                request,
                PathAndQuery::from_static(TRACE_EXPORT_PATH),
                PreEncoded::<ExportTraceServiceResponse>::default(),
            )
            .await
        };
        match tokio::time::timeout(timeout, call).await {
            Err(_) => Err(ExportError::new(
                true,
                format!("no answer within {} ms", timeout.as_millis()),
            )),
            Ok(Ok(resp)) => Ok(from_response(resp.into_inner())),
            Ok(Err(status)) => {
                let retryable = grpc_retryable(status.code());
                let mut message = format!("gRPC {:?}", status.code());
                if !status.message().is_empty() {
                    message.push_str(": ");
                    message.push_str(status.message());
                }
                append_chain(&mut message, std::error::Error::source(&status));
                Err(ExportError::new(retryable, message))
            }
        }
    }
}

/// A tonic codec whose requests are protobuf bytes already and whose responses are `R`.
struct PreEncoded<R>(std::marker::PhantomData<fn() -> R>);

impl<R> Default for PreEncoded<R> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<R: Message + Default + Send + 'static> Codec for PreEncoded<R> {
    type Encode = Bytes;
    type Decode = R;
    type Encoder = BytesEncoder;
    type Decoder = ProstDecoder<R>;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> ProstDecoder<R> {
        ProstDecoder(std::marker::PhantomData)
    }
}

struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

struct ProstDecoder<R>(std::marker::PhantomData<fn() -> R>);

impl<R: Message + Default> Decoder for ProstDecoder<R> {
    type Item = R;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<R>, tonic::Status> {
        R::decode(buf)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("undecodable response: {e}")))
    }
}

pub struct HttpTransport {
    client: reqwest::Client,
    url: reqwest::Url,
    gzip: bool,
}

impl HttpTransport {
    pub fn new(url: &str, cfg: &ExportConfig) -> anyhow::Result<Self> {
        let url =
            reqwest::Url::parse(url).with_context(|| format!("OTLP/HTTP endpoint {url:?}"))?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &cfg.headers {
            match (
                reqwest::header::HeaderName::from_bytes(k.as_bytes()),
                reqwest::header::HeaderValue::from_str(v),
            ) {
                (Ok(k), Ok(mut v)) => {
                    v.set_sensitive(true);
                    headers.insert(k, v);
                }
                _ => tracing::warn!("OTLP/HTTP: header {k:?} is invalid; ignored"),
            }
        }
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static("application/x-protobuf"),
        );
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .default_headers(headers)
            .connect_timeout(cfg.timeout)
            .timeout(cfg.timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .context("building the OTLP/HTTP client")?;
        Ok(Self {
            client,
            url,
            gzip: cfg.compression == Compression::Gzip,
        })
    }

    /// The request body from the encoded `ExportTraceServiceRequest`: gzipped if configured.
    /// Built once per batch.
    pub fn encode(&self, raw: Vec<u8>) -> Bytes {
        if !self.gzip {
            return raw.into();
        }
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(raw.len() / 4 + 64),
            flate2::Compression::fast(),
        );
        // Writing to a Vec cannot fail.
        match gz.write_all(&raw).and_then(|()| gz.finish()) {
            Ok(v) => v.into(),
            Err(_) => Bytes::new(),
        }
    }

    pub async fn send(&self, body: Bytes, timeout: Duration) -> Result<Sent, ExportError> {
        let mut rb = self
            .client
            .post(self.url.clone())
            .timeout(timeout)
            .body(body);
        if self.gzip {
            rb = rb.header(reqwest::header::CONTENT_ENCODING, "gzip");
        }
        // reqwest's timeout covers the whole exchange; this one is belt and braces.
        let resp = match tokio::time::timeout(timeout, rb.send()).await {
            Err(_) => {
                return Err(ExportError::new(
                    true,
                    format!("no answer within {} ms", timeout.as_millis()),
                ));
            }
            Ok(Err(e)) => {
                // Connection refused/reset, DNS, TLS handshake, timeout: all transient
                // from here. Only a request we could not even build is not.
                return Err(ExportError::new(!e.is_builder(), chain(&e)));
            }
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let is_protobuf = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("protobuf"));
        let body = tokio::time::timeout(timeout, resp.bytes()).await;
        if status.is_success() {
            // The data was accepted; a body we cannot read or decode is not a failure.
            return Ok(match body {
                Ok(Ok(b)) if !b.is_empty() => ExportTraceServiceResponse::decode(b)
                    .map(from_response)
                    .unwrap_or_default(),
                _ => Sent::default(),
            });
        }
        let retryable = matches!(status.as_u16(), 429 | 502 | 503 | 504);
        let mut message = format!("HTTP {status}");
        if let Ok(Ok(b)) = body {
            // Error bodies are a google.rpc.Status (protobuf); its field 2 is the message. Show
            // plain text bodies as is.
            let text = is_protobuf
                .then(|| decode_rpc_status_message(&b))
                .flatten()
                .or_else(|| std::str::from_utf8(&b).ok().map(str::to_owned))
                .unwrap_or_default();
            let text = text.trim();
            if !text.is_empty() {
                message.push_str(": ");
                message.extend(text.chars().take(200));
            }
        }
        Err(ExportError {
            retryable,
            retry_after,
            message,
        })
    }
}

/// `google.rpc.Status { int32 code = 1; string message = 2; ... }` → message.
fn decode_rpc_status_message(b: &[u8]) -> Option<String> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct RpcStatus {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
    }
    RpcStatus::decode(b)
        .ok()
        .map(|s| s.message)
        .filter(|m| !m.is_empty())
}
