//! Helpers shared by the process tests.
use super::proc_info::ProcInfo;
use crate::span::{AttrValue, Resource};

pub(super) fn attr<'a>(r: &'a Resource, key: &str) -> Option<&'a AttrValue> {
    r.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

pub(super) fn s(r: &Resource, key: &str) -> Option<String> {
    match attr(r, key) {
        Some(AttrValue::Str(v)) => Some(v.to_string()),
        None => None,
        other => panic!("{key}: {other:?}"),
    }
}

pub(super) fn info(
    exe: Option<&str>,
    comm: Option<&str>,
    cmdline: &[u8],
    environ: &[u8],
) -> ProcInfo {
    ProcInfo {
        exe: exe.map(Into::into),
        comm: comm.map(Into::into),
        cmdline: cmdline.to_vec(),
        environ: environ.to_vec(),
        container: Default::default(),
    }
}

pub(super) fn keys(r: &Resource) -> Vec<&str> {
    r.attributes.iter().map(|(k, _)| k.as_str()).collect()
}
