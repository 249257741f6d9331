//! The OpenTelemetry variables of a process's environment: `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` (the agent's own too).
use crate::key_value_list;

/// Parses the agent's own `OTEL_RESOURCE_ATTRIBUTES` (empty when unset or invalid), for
/// [`super::ProcessTable::new`]'s `extra`.
pub fn resource_attributes_from_env() -> Vec<(String, String)> {
    std::env::var("OTEL_RESOURCE_ATTRIBUTES")
        .ok()
        .and_then(|v| parse_resource_attributes(&v))
        .unwrap_or_default()
}

/// The OTel variables of a process environment (first occurrence of each wins, as `getenv`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct OtelEnv {
    pub(super) service_name: Option<String>,
    pub(super) resource_attributes: Option<String>,
}

pub(super) fn parse_environ(environ: &[u8]) -> OtelEnv {
    let mut env = OtelEnv::default();
    for entry in environ.split(|b| *b == 0) {
        let Some(eq) = entry.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (key, value) = (&entry[..eq], &entry[eq + 1..]);
        let slot = match key {
            b"OTEL_SERVICE_NAME" => &mut env.service_name,
            b"OTEL_RESOURCE_ATTRIBUTES" => &mut env.resource_attributes,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(String::from_utf8_lossy(value).into_owned());
        }
    }
    env
}

/// Parses `OTEL_RESOURCE_ATTRIBUTES` ([`key_value_list`]; a repeated key keeps its last
/// value). `None` when any entry is invalid, in which case the OTel spec says to discard all
/// of it.
pub fn parse_resource_attributes(s: &str) -> Option<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for entry in key_value_list::entries(s) {
        let (k, v) = entry.ok()?;
        match out.iter_mut().find(|(ek, _)| *ek == k) {
            Some(slot) => slot.1 = v,
            None => out.push((k, v)),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environ_otel_service_name() {
        let env = parse_environ(b"PATH=/bin\0OTEL_SERVICE_NAME=checkout\0HOME=/root\0");
        assert_eq!(env.service_name.as_deref(), Some("checkout"));
        assert_eq!(env.resource_attributes, None);
        // First occurrence wins; values may contain '='.
        let env = parse_environ(b"OTEL_SERVICE_NAME=a=b\0OTEL_SERVICE_NAME=c\0");
        assert_eq!(env.service_name.as_deref(), Some("a=b"));
        // No trailing NUL, junk entries, a similar name.
        let env = parse_environ(b"junk\0\0=x\0MY_OTEL_SERVICE_NAME=no\0OTEL_SERVICE_NAME=last");
        assert_eq!(env.service_name.as_deref(), Some("last"));
        assert_eq!(parse_environ(b""), OtelEnv::default());
        assert_eq!(parse_environ(b"\xff\xfe\0A=\xff"), OtelEnv::default());
    }

    #[test]
    fn resource_attributes_parse() {
        let attrs = parse_resource_attributes(
            " service.name = my%20svc , deployment.environment=prod,team=a%2Cb%3Dc ,, ",
        )
        .unwrap();
        assert_eq!(
            attrs,
            vec![
                ("service.name".into(), "my svc".into()),
                ("deployment.environment".into(), "prod".into()),
                ("team".into(), "a,b=c".into()),
            ]
        );
        assert_eq!(parse_resource_attributes("").unwrap(), vec![]);
        assert_eq!(
            parse_resource_attributes("k=").unwrap(),
            vec![("k".into(), "".into())]
        );
        assert_eq!(
            parse_resource_attributes("k=1,k=2").unwrap(),
            vec![("k".into(), "2".into())]
        );
        assert_eq!(
            parse_resource_attributes("k=caf%C3%A9").unwrap(),
            vec![("k".into(), "café".into())]
        );
        assert_eq!(
            parse_resource_attributes("k=a+b").unwrap(),
            vec![("k".into(), "a+b".into())]
        );
        // Invalid: the whole value is discarded.
        for bad in ["a=1,novalue", "=v", "k=%", "k=%4", "k=%zz", "%zz=v"] {
            assert_eq!(parse_resource_attributes(bad), None, "{bad}");
        }
        // Decoded bytes that are not UTF-8 are replaced, not an error (W3C Baggage).
        assert_eq!(
            parse_resource_attributes("k=%ff").unwrap(),
            vec![("k".into(), "\u{fffd}".into())]
        );
        // Keys are percent-decoded too (`,` and `=` in a key must be encoded).
        assert_eq!(
            parse_resource_attributes("a%3Db%2Cc=1").unwrap(),
            vec![("a=b,c".into(), "1".into())]
        );
    }
}
