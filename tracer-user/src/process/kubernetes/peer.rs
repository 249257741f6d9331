//! `service.peer.name` on CLIENT spans whose peer is a pod of this node or a Service's
//! cluster IP (the current semantic-convention name; it replaces the deprecated
//! `peer.service`). The service graph uses it when present.
use std::net::IpAddr;
use std::sync::Arc;

use super::store::Store;
use crate::span::{AttrValue, Span, SpanKind};

pub const PEER_NAME_KEY: &str = "service.peer.name";

/// Names the peers of CLIENT spans; does nothing when Kubernetes metadata is off.
#[derive(Clone, Default)]
pub struct PeerNames {
    store: Option<Arc<Store>>,
}

impl PeerNames {
    pub fn new(store: Option<Arc<Store>>) -> Self {
        Self { store }
    }

    pub fn apply(&self, mut span: Span) -> Span {
        let Some(store) = &self.store else {
            return span;
        };
        if span.kind != SpanKind::Client || span.attr(PEER_NAME_KEY).is_some() {
            return span;
        }
        // The address connected to (a Service IP before kube-proxy's DNAT), else the
        // request's server address when it is an IP.
        let name = ["network.peer.address", "server.address"]
            .into_iter()
            .find_map(|key| match span.attr(key) {
                Some(AttrValue::Str(s)) => store.peer_name(s.parse::<IpAddr>().ok()?),
                _ => None,
            });
        if let Some(name) = name {
            span.attributes.push((PEER_NAME_KEY, name.into()));
        }
        span
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::kubernetes::store::tests::pod;
    use crate::span::test_span;

    #[test]
    fn client_spans_to_known_pods_get_the_peer_name() {
        let store = Arc::new(Store::default());
        store.apply_pod(pod("checkout-6d5f7c9b8-x", "u1", "c1", "10.1.0.5"));
        let names = PeerNames::new(Some(store));
        let client = |peer: &str, server: &str| {
            let mut s = test_span();
            s.kind = SpanKind::Client;
            s.attributes.push(("server.address", server.into()));
            s.attributes.push(("network.peer.address", peer.into()));
            s
        };
        let s = names.apply(client("10.1.0.5", "checkout.shop"));
        assert_eq!(s.attr(PEER_NAME_KEY), Some(&"checkout".into()));
        assert_eq!(
            names
                .apply(client("10.9.9.9", "10.1.0.5"))
                .attr(PEER_NAME_KEY),
            Some(&"checkout".into())
        );
        assert_eq!(
            names.apply(client("10.9.9.9", "x")).attr(PEER_NAME_KEY),
            None
        );
        // SERVER spans and spans that already name their peer are left alone.
        let mut server = client("10.1.0.5", "x");
        server.kind = SpanKind::Server;
        assert_eq!(names.apply(server).attr(PEER_NAME_KEY), None);
        let mut named = client("10.1.0.5", "x");
        named.attributes.push((PEER_NAME_KEY, "given".into()));
        let named = names.apply(named);
        assert_eq!(named.attr(PEER_NAME_KEY), Some(&"given".into()));
        assert_eq!(named.attributes.len(), 3);
        // Off: spans unchanged.
        let s = client("10.1.0.5", "x");
        assert_eq!(PeerNames::default().apply(s.clone()), s);
    }
}
