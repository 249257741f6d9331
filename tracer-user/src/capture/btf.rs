//! Kernel struct field offsets from the running kernel's BTF, so the programs read the right
//! fields on any kernel without hard-coded layouts.
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use btf_rs::{Btf, Type};
use tracer_common::KernelOffsets;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Byte offset of `path` (e.g. `["__sk_common", "skc_daddr"]`) inside `struct name`,
/// looking through anonymous structs and unions.
pub fn field_offset(btf: &Btf, name: &str, path: &[&str]) -> Result<u32> {
    let ty = btf
        .resolve_types_by_name(name)
        .with_context(|| format!("BTF has no type `{name}`"))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .ok_or_else(|| anyhow!("BTF type `{name}` is not a struct"))?;
    let mut ty = ty;
    let mut offset_bits = 0u32;
    for field in path {
        let (bits, member_ty) = find_member(btf, &ty, field, 0)?
            .ok_or_else(|| anyhow!("struct `{name}` has no field `{}`", path.join(".")))?;
        offset_bits += bits;
        ty = skip_modifiers(btf, member_ty)?;
    }
    if !offset_bits.is_multiple_of(8) {
        bail!("`{name}.{}` is a bit field", path.join("."));
    }
    Ok(offset_bits / 8)
}

fn skip_modifiers(btf: &Btf, mut ty: Type) -> Result<Type> {
    loop {
        ty = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t)?,
            Type::Volatile(t) | Type::Const(t) | Type::Restrict(t) => {
                btf.resolve_chained_type(t)?
            }
            Type::TypeTag(t) => btf.resolve_chained_type(t)?,
            _ => return Ok(ty),
        };
    }
}

/// Depth-limited search of `field` among the members of a struct or union, descending into
/// anonymous members. Returns the offset in bits and the member's type.
fn find_member(btf: &Btf, ty: &Type, field: &str, depth: u32) -> Result<Option<(u32, Type)>> {
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => return Ok(None),
    };
    for m in members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == field {
            return Ok(Some((m.bit_offset(), btf.resolve_chained_type(m)?)));
        }
        if name.is_empty() && depth < 4 {
            let inner = skip_modifiers(btf, btf.resolve_chained_type(m)?)?;
            if let Some((bits, t)) = find_member(btf, &inner, field, depth + 1)? {
                return Ok(Some((m.bit_offset() + bits, t)));
            }
        }
    }
    Ok(None)
}

/// All offsets the programs need.
pub fn kernel_offsets(path: &Path) -> Result<KernelOffsets> {
    let btf =
        Btf::from_file(path).with_context(|| format!("reading BTF from {}", path.display()))?;
    let sk = |field: &str| field_offset(&btf, "sock", &["__sk_common", field]);
    Ok(KernelOffsets {
        task_files: field_offset(&btf, "task_struct", &["files"])?,
        files_fdt: field_offset(&btf, "files_struct", &["fdt"])?,
        fdt_max_fds: field_offset(&btf, "fdtable", &["max_fds"])?,
        fdt_fd: field_offset(&btf, "fdtable", &["fd"])?,
        file_inode: field_offset(&btf, "file", &["f_inode"])?,
        file_private_data: field_offset(&btf, "file", &["private_data"])?,
        inode_mode: field_offset(&btf, "inode", &["i_mode"])?,
        inode_ino: field_offset(&btf, "inode", &["i_ino"])?,
        socket_type: field_offset(&btf, "socket", &["type"])?,
        socket_sk: field_offset(&btf, "socket", &["sk"])?,
        sk_family: sk("skc_family")?,
        sk_daddr: sk("skc_daddr")?,
        sk_rcv_saddr: sk("skc_rcv_saddr")?,
        sk_dport: sk("skc_dport")?,
        sk_num: sk("skc_num")?,
        sk_v6_daddr: sk("skc_v6_daddr")?,
        sk_v6_rcv_saddr: sk("skc_v6_rcv_saddr")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against this machine's kernel: every offset must resolve, inside sane bounds.
    #[test]
    fn offsets_resolve_on_this_kernel() {
        let off = kernel_offsets(Path::new(VMLINUX_BTF)).expect("BTF offsets");
        // struct sock starts with struct sock_common; these are within its first 128 bytes.
        for o in [
            off.sk_daddr,
            off.sk_rcv_saddr,
            off.sk_dport,
            off.sk_num,
            off.sk_family,
        ] {
            assert!(o < 128, "{off:?}");
        }
        assert_eq!(off.sk_rcv_saddr, off.sk_daddr + 4, "{off:?}");
        assert!(off.task_files > 0 && off.fdt_fd > 0, "{off:?}");
    }
}
