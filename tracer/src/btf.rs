//! A minimal reader for BPF Type Format (BTF) blobs such as
//! `/sys/kernel/btf/vmlinux`: just enough to find the byte offset of a struct
//! member and the value of an enum variant, so the eBPF programs can be handed
//! kernel struct layouts at load time instead of hard-coding them.
//!
//! The format is defined in the kernel's `include/uapi/linux/btf.h` and
//! `Documentation/bpf/btf.rst` (layout unchanged since v5.0 apart from new
//! kinds: FLOAT v5.13, DECL_TAG v5.16, TYPE_TAG v5.17, ENUM64 v6.0).
//! Only little-endian blobs are accepted (the kernels the tracer runs on).
//! Every read is length-checked: malformed input yields [`BtfError`], never a
//! panic.

#![cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "parts of the API (from_bytes, member_offset, VMLINUX_PATH) are used only by tests so far"
    )
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where the running kernel exposes its own BTF (needs `CONFIG_DEBUG_INFO_BTF`).
pub const VMLINUX_PATH: &str = "/sys/kernel/btf/vmlinux";

/// `BTF_MAGIC` from include/uapi/linux/btf.h.
const MAGIC: u16 = 0xeb9f;
/// Size of `struct btf_header` in version 1.
const HEADER_LEN: usize = 24;
/// Size of `struct btf_type` (name_off, info, size/type).
const TYPE_LEN: usize = 12;
/// Pointer size of the 64-bit kernels the tracer supports (BTF_KIND_PTR has no size).
const POINTER_SIZE: u32 = 8;
/// Longest typedef/const/volatile chain (or array nesting, or anonymous member
/// nesting) followed before the input is called malformed: real kernels stay
/// in single digits; this bounds work on cyclic input.
const MAX_DEPTH: usize = 64;

/// `BTF_KIND_*` from include/uapi/linux/btf.h.
mod kind {
    pub const INT: u8 = 1;
    pub const PTR: u8 = 2;
    pub const ARRAY: u8 = 3;
    pub const STRUCT: u8 = 4;
    pub const UNION: u8 = 5;
    pub const ENUM: u8 = 6;
    pub const FWD: u8 = 7;
    pub const TYPEDEF: u8 = 8;
    pub const VOLATILE: u8 = 9;
    pub const CONST: u8 = 10;
    pub const RESTRICT: u8 = 11;
    pub const FUNC: u8 = 12;
    pub const FUNC_PROTO: u8 = 13;
    pub const VAR: u8 = 14;
    pub const DATASEC: u8 = 15;
    pub const FLOAT: u8 = 16;
    pub const DECL_TAG: u8 = 17;
    pub const TYPE_TAG: u8 = 18;
    pub const ENUM64: u8 = 19;
}

/// Errors from reading BTF or looking things up in it.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed BTF: {what}")]
    Malformed { what: String },
    #[error("BTF has no type named `{name}`")]
    MissingType { name: String },
    #[error("`{ty}` has no member `{member}`")]
    MissingMember { ty: String, member: String },
    #[error("`{ty}` is not a struct or union, so it has no member `{member}`")]
    NotComposite { ty: String, member: String },
    #[error("`{ty}.{member}` is a bitfield not on a byte boundary (bit offset {bit_offset}, {bits} bits)")]
    Bitfield {
        ty: String,
        member: String,
        bit_offset: u64,
        bits: u32,
    },
    #[error("enum `{name}` has no variant `{variant}`")]
    MissingVariant { name: String, variant: String },
}

fn malformed(what: impl Into<String>) -> BtfError {
    BtfError::Malformed { what: what.into() }
}

/// Where a member sits inside the struct a lookup started from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Byte offset from the start of the outer struct.
    pub offset: u32,
    /// Size in bytes (a byte-aligned bitfield counts its bits / 8).
    pub size: u32,
}

/// One `struct btf_type` header; its trailing data stays in [`Btf::data`].
#[derive(Clone, Copy, Debug)]
struct Type {
    name_off: u32,
    info: u32,
    /// `size` for INT/ENUM/STRUCT/UNION/FLOAT/DATASEC/ENUM64, else `type`.
    size_or_type: u32,
    /// Absolute offset in `data` of the kind-specific trailing data.
    extra: usize,
}

impl Type {
    const VOID: Type = Type {
        name_off: 0,
        info: 0,
        size_or_type: 0,
        extra: 0,
    };

    fn kind(&self) -> u8 {
        ((self.info >> 24) & 0x1f) as u8
    }

    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }

    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }

    fn is_composite(&self) -> bool {
        matches!(self.kind(), kind::STRUCT | kind::UNION)
    }
}

/// A parsed BTF blob with structs, unions and enums indexed by name.
pub struct Btf {
    data: Vec<u8>,
    /// Absolute bounds of the string section in `data`.
    str_start: usize,
    str_end: usize,
    /// Indexed by type id; id 0 is `void`.
    types: Vec<Type>,
    /// Named STRUCT (preferred) or UNION ids. FWD declarations are not indexed.
    composites: HashMap<String, u32>,
    /// Named ENUM / ENUM64 ids.
    enums: HashMap<String, u32>,
}

impl std::fmt::Debug for Btf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Btf")
            .field("bytes", &self.data.len())
            .field("types", &self.types.len())
            .finish_non_exhaustive()
    }
}

fn read_u16(data: &[u8], at: usize) -> Option<u16> {
    let bytes = data.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes(bytes.try_into().ok()?))
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// `[start + off, start + off + len)` if it lies inside `[start, end)`.
fn section(
    start: usize,
    end: usize,
    off: u32,
    len: u32,
    what: &str,
) -> Result<(usize, usize), BtfError> {
    let s = start
        .checked_add(off as usize)
        .ok_or_else(|| malformed(format!("{what} offset overflows")))?;
    let e = s
        .checked_add(len as usize)
        .ok_or_else(|| malformed(format!("{what} length overflows")))?;
    if e > end {
        return Err(malformed(format!(
            "{what} section ends at {e}, past the blob's {end} bytes"
        )));
    }
    Ok((s, e))
}

impl Btf {
    /// Reads and parses a BTF file, e.g. [`VMLINUX_PATH`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BtfError> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|source| BtfError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(data)
    }

    /// Parses a BTF blob held in memory.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BtfError> {
        Self::parse(bytes.to_vec())
    }

    fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let magic = read_u16(&data, 0).ok_or_else(|| malformed("shorter than the magic number"))?;
        if magic == MAGIC.swap_bytes() {
            return Err(malformed("big-endian BTF is not supported"));
        }
        if magic != MAGIC {
            return Err(malformed(format!(
                "bad magic {magic:#06x}, expected {MAGIC:#06x}"
            )));
        }
        let version = data.get(2).copied().unwrap_or(0);
        if version != 1 {
            return Err(malformed(format!("unsupported BTF version {version}")));
        }
        let field = |at: usize| read_u32(&data, at).ok_or_else(|| malformed("truncated header"));
        let hdr_len = field(4)? as usize;
        if hdr_len < HEADER_LEN || hdr_len > data.len() {
            return Err(malformed(format!("header length {hdr_len} out of range")));
        }
        let (type_off, type_len, str_off, str_len) =
            (field(8)?, field(12)?, field(16)?, field(20)?);
        let (type_start, type_end) = section(hdr_len, data.len(), type_off, type_len, "type")?;
        let (str_start, str_end) = section(hdr_len, data.len(), str_off, str_len, "string")?;

        let mut types = vec![Type::VOID];
        let mut pos = type_start;
        while pos < type_end {
            let id = types.len();
            let header = |at: usize| {
                (at + 4 <= type_end)
                    .then(|| read_u32(&data, at))
                    .flatten()
                    .ok_or_else(|| malformed(format!("type {id} truncated")))
            };
            let ty = Type {
                name_off: header(pos)?,
                info: header(pos + 4)?,
                size_or_type: header(pos + 8)?,
                extra: pos + TYPE_LEN,
            };
            let vlen = ty.vlen();
            // Trailing data per kind (include/uapi/linux/btf.h): btf_array 12,
            // btf_member 12, btf_enum 8, btf_param 8, btf_var 4,
            // btf_var_secinfo 12, btf_decl_tag 4, btf_enum64 12, INT encoding 4.
            let extra_len = match ty.kind() {
                kind::INT | kind::VAR | kind::DECL_TAG => 4,
                kind::ARRAY => 12,
                kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * vlen,
                kind::ENUM | kind::FUNC_PROTO => 8 * vlen,
                kind::PTR
                | kind::FWD
                | kind::TYPEDEF
                | kind::VOLATILE
                | kind::CONST
                | kind::RESTRICT
                | kind::FUNC
                | kind::FLOAT
                | kind::TYPE_TAG => 0,
                other => return Err(malformed(format!("type {id} has unknown kind {other}"))),
            };
            let next = ty.extra + extra_len;
            if next > type_end {
                return Err(malformed(format!("type {id} runs past the type section")));
            }
            types.push(ty);
            pos = next;
        }

        let mut btf = Btf {
            data,
            str_start,
            str_end,
            types,
            composites: HashMap::new(),
            enums: HashMap::new(),
        };
        btf.index()?;
        Ok(btf)
    }

    /// Indexes named structs, unions and enums. A STRUCT wins over a UNION of
    /// the same name, a non-empty one over an empty one, else the first.
    fn index(&mut self) -> Result<(), BtfError> {
        let rank = |t: &Type| u8::from(t.kind() == kind::STRUCT) * 2 + u8::from(t.vlen() > 0);
        let mut composites: HashMap<String, u32> = HashMap::new();
        let mut enums: HashMap<String, u32> = HashMap::new();
        for (id, ty) in self.types.iter().enumerate().skip(1) {
            if ty.name_off == 0 {
                continue;
            }
            let map = match ty.kind() {
                kind::STRUCT | kind::UNION => &mut composites,
                kind::ENUM | kind::ENUM64 => &mut enums,
                _ => continue,
            };
            let name = self.name(ty.name_off)?;
            let id = id as u32;
            match map.get_mut(name) {
                None => {
                    map.insert(name.to_owned(), id);
                }
                Some(old) => {
                    if rank(ty) > rank(&self.types[*old as usize]) {
                        *old = id;
                    }
                }
            }
        }
        self.composites = composites;
        self.enums = enums;
        Ok(())
    }

    /// The NUL-terminated string at `off` in the string section.
    fn name(&self, off: u32) -> Result<&str, BtfError> {
        let start = self
            .str_start
            .checked_add(off as usize)
            .filter(|s| *s < self.str_end)
            .ok_or_else(|| malformed(format!("string offset {off} out of range")))?;
        let tail = &self.data[start..self.str_end];
        let len = tail
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| malformed(format!("string at {off} is not NUL-terminated")))?;
        std::str::from_utf8(&tail[..len])
            .map_err(|_| malformed(format!("string at {off} is not UTF-8")))
    }

    fn ty(&self, id: u32) -> Result<Type, BtfError> {
        self.types
            .get(id as usize)
            .copied()
            .ok_or_else(|| malformed(format!("type id {id} out of range")))
    }

    fn u32_at(&self, at: usize) -> Result<u32, BtfError> {
        read_u32(&self.data, at).ok_or_else(|| malformed(format!("read past the end at {at}")))
    }

    /// Follows typedef/const/volatile/restrict/type_tag to the underlying type.
    fn resolve(&self, mut id: u32) -> Result<(u32, Type), BtfError> {
        for _ in 0..MAX_DEPTH {
            let ty = self.ty(id)?;
            match ty.kind() {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return Ok((id, ty)),
            }
        }
        Err(malformed(format!(
            "type chain from id {id} too long (cycle?)"
        )))
    }

    /// Size in bytes of a type.
    fn type_size(&self, id: u32, depth: usize) -> Result<u32, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed("array nesting too deep (cycle?)"));
        }
        let (id, ty) = self.resolve(id)?;
        match ty.kind() {
            kind::INT
            | kind::ENUM
            | kind::ENUM64
            | kind::STRUCT
            | kind::UNION
            | kind::FLOAT
            | kind::DATASEC => Ok(ty.size_or_type),
            kind::PTR => Ok(POINTER_SIZE),
            kind::ARRAY => {
                // struct btf_array { type; index_type; nelems; }
                let elem = self.u32_at(ty.extra)?;
                let nelems = self.u32_at(ty.extra + 8)?;
                self.type_size(elem, depth + 1)?
                    .checked_mul(nelems)
                    .ok_or_else(|| malformed(format!("array type {id} size overflows")))
            }
            other => Err(malformed(format!("type {id} (kind {other}) has no size"))),
        }
    }

    /// Finds `name` among the members of composite `ty`, looking through
    /// anonymous struct/union members. Returns (bit offset, type id, bitfield
    /// bits or 0).
    fn find_member(
        &self,
        ty: Type,
        name: &str,
        depth: usize,
    ) -> Result<Option<(u64, u32, u32)>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed("anonymous members nested too deep (cycle?)"));
        }
        for i in 0..ty.vlen() {
            // struct btf_member { name_off; type; offset; }
            let at = ty.extra + i * 12;
            let (name_off, member_ty, raw) =
                (self.u32_at(at)?, self.u32_at(at + 4)?, self.u32_at(at + 8)?);
            // With kind_flag the offset packs bitfield size (high 8 bits) and
            // bit offset (low 24 bits); without it, it is the bit offset.
            let (bit_offset, bits) = if ty.kind_flag() {
                (raw & 0x00ff_ffff, raw >> 24)
            } else {
                (raw, 0)
            };
            if name_off == 0 {
                let (_, inner) = self.resolve(member_ty)?;
                if inner.is_composite() {
                    if let Some((off, id, b)) = self.find_member(inner, name, depth + 1)? {
                        return Ok(Some((off + u64::from(bit_offset), id, b)));
                    }
                }
            } else if self.name(name_off)? == name {
                return Ok(Some((u64::from(bit_offset), member_ty, bits)));
            }
        }
        Ok(None)
    }

    /// Offset and size of the member at dotted `path` (e.g.
    /// `"__sk_common.skc_net"`) inside the struct (or union) `struct_name`.
    /// Each step descends through typedef/const/volatile wrappers and searches
    /// anonymous struct/union members transparently.
    pub fn member(&self, struct_name: &str, path: &str) -> Result<Member, BtfError> {
        let mut ty_id = self.composite(struct_name)?;
        let mut ty_desc = struct_name.to_owned();
        let mut total_bits: u64 = 0;
        let mut last = None;
        for part in path.split('.') {
            let (_, ty) = self.resolve(ty_id)?;
            if !ty.is_composite() {
                return Err(BtfError::NotComposite {
                    ty: ty_desc,
                    member: part.to_owned(),
                });
            }
            let (bit_offset, member_ty, bits) =
                self.find_member(ty, part, 0)?
                    .ok_or_else(|| BtfError::MissingMember {
                        ty: ty_desc.clone(),
                        member: part.to_owned(),
                    })?;
            total_bits += bit_offset;
            ty_desc = format!("{ty_desc}.{part}");
            ty_id = member_ty;
            last = Some((part, bits));
        }
        let Some((member, mut bits)) = last else {
            return Err(malformed("empty member path"));
        };
        // Old encoding (struct kind_flag 0): a bitfield is an INT whose
        // encoding has fewer bits than its size, or a bit offset
        // (BTF_INT_OFFSET / BTF_INT_BITS in include/uapi/linux/btf.h).
        if bits == 0 {
            let (_, ty) = self.resolve(ty_id)?;
            if ty.kind() == kind::INT {
                let encoding = self.u32_at(ty.extra)?;
                let (int_bits, int_offset) = (encoding & 0xff, (encoding >> 16) & 0xff);
                if int_offset != 0 || u64::from(int_bits) != u64::from(ty.size_or_type) * 8 {
                    bits = int_bits;
                    total_bits += u64::from(int_offset);
                }
            }
        }
        let size = if bits != 0 {
            if !total_bits.is_multiple_of(8) || !bits.is_multiple_of(8) {
                return Err(BtfError::Bitfield {
                    ty: struct_name.to_owned(),
                    member: path.to_owned(),
                    bit_offset: total_bits,
                    bits,
                });
            }
            bits / 8
        } else {
            if !total_bits.is_multiple_of(8) {
                return Err(malformed(format!(
                    "`{struct_name}.{path}` is not byte-aligned"
                )));
            }
            self.type_size(ty_id, 0)?
        };
        let offset = u32::try_from(total_bits / 8)
            .map_err(|_| malformed(format!("`{struct_name}.{member}` offset overflows")))?;
        Ok(Member { offset, size })
    }

    /// Size in bytes of the struct (or union) `name`.
    pub fn struct_size(&self, name: &str) -> Result<u32, BtfError> {
        self.type_size(self.composite(name)?, 0)
    }

    /// Type id of the struct (or union) `name`.
    fn composite(&self, name: &str) -> Result<u32, BtfError> {
        self.composites
            .get(name)
            .copied()
            .ok_or_else(|| BtfError::MissingType {
                name: name.to_owned(),
            })
    }

    /// Byte offset of the member at dotted `path` inside `struct_name`; see
    /// [`Btf::member`].
    pub fn member_offset(&self, struct_name: &str, path: &str) -> Result<u32, BtfError> {
        self.member(struct_name, path).map(|m| m.offset)
    }

    /// Value of `variant` in the named enum (ENUM or ENUM64). Signedness
    /// follows the enum's kind_flag (set for signed enums since v6.0).
    pub fn enum_value(&self, enum_name: &str, variant: &str) -> Result<i64, BtfError> {
        let ty = self.enum_type(enum_name)?;
        for i in 0..ty.vlen() {
            if self.enum_name_at(ty, i)? == variant {
                return self.enum_value_at(ty, i, enum_name);
            }
        }
        Err(BtfError::MissingVariant {
            name: enum_name.to_owned(),
            variant: variant.to_owned(),
        })
    }

    /// All (variant, value) pairs of the named enum, in declaration order.
    pub fn enum_variants(&self, enum_name: &str) -> Result<Vec<(String, i64)>, BtfError> {
        let ty = self.enum_type(enum_name)?;
        (0..ty.vlen())
            .map(|i| {
                Ok((
                    self.enum_name_at(ty, i)?.to_owned(),
                    self.enum_value_at(ty, i, enum_name)?,
                ))
            })
            .collect()
    }

    fn enum_type(&self, enum_name: &str) -> Result<Type, BtfError> {
        let id = *self
            .enums
            .get(enum_name)
            .ok_or_else(|| BtfError::MissingType {
                name: enum_name.to_owned(),
            })?;
        self.ty(id)
    }

    /// Offset of entry `i`: `struct btf_enum { name_off; val; }` (8 bytes) or
    /// `struct btf_enum64 { name_off; val_lo32; val_hi32; }` (12 bytes).
    fn enum_entry(ty: Type, i: usize) -> usize {
        ty.extra + i * if ty.kind() == kind::ENUM64 { 12 } else { 8 }
    }

    fn enum_name_at(&self, ty: Type, i: usize) -> Result<&str, BtfError> {
        self.name(self.u32_at(Self::enum_entry(ty, i))?)
    }

    fn enum_value_at(&self, ty: Type, i: usize, enum_name: &str) -> Result<i64, BtfError> {
        let at = Self::enum_entry(ty, i);
        let signed = ty.kind_flag();
        if ty.kind() == kind::ENUM64 {
            let raw = u64::from(self.u32_at(at + 4)?) | (u64::from(self.u32_at(at + 8)?) << 32);
            if signed {
                Ok(raw as i64)
            } else {
                i64::try_from(raw).map_err(|_| {
                    malformed(format!("a value of enum `{enum_name}` does not fit in i64"))
                })
            }
        } else {
            let raw = self.u32_at(at + 4)?;
            Ok(if signed {
                i64::from(raw as i32)
            } else {
                i64::from(raw)
            })
        }
    }
}

/// Builds BTF blobs for tests, one type at a time (ids in call order, from 1).
#[cfg(test)]
pub(crate) mod builder {
    use super::kind;

    pub(crate) struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl BtfBuilder {
        pub(crate) fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn push(
            &mut self,
            name: &str,
            kind: u8,
            vlen: usize,
            kind_flag: bool,
            size_or_type: u32,
            extra: &[u32],
        ) -> u32 {
            let name_off = self.str(name);
            let info = (u32::from(kind_flag) << 31) | (u32::from(kind) << 24) | vlen as u32;
            for word in [name_off, info, size_or_type].iter().chain(extra) {
                self.types.extend_from_slice(&word.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }

        pub(crate) fn int(&mut self, name: &str, size: u32) -> u32 {
            self.push(name, kind::INT, 0, false, size, &[size * 8])
        }

        /// An INT with an explicit encoding (old-style bitfield).
        pub(crate) fn int_bits(
            &mut self,
            name: &str,
            size: u32,
            bit_offset: u32,
            bits: u32,
        ) -> u32 {
            self.push(
                name,
                kind::INT,
                0,
                false,
                size,
                &[(bit_offset << 16) | bits],
            )
        }

        pub(crate) fn ptr(&mut self, target: u32) -> u32 {
            self.push("", kind::PTR, 0, false, target, &[])
        }

        pub(crate) fn typedef(&mut self, name: &str, target: u32) -> u32 {
            self.push(name, kind::TYPEDEF, 0, false, target, &[])
        }

        pub(crate) fn volatile(&mut self, target: u32) -> u32 {
            self.push("", kind::VOLATILE, 0, false, target, &[])
        }

        pub(crate) fn konst(&mut self, target: u32) -> u32 {
            self.push("", kind::CONST, 0, false, target, &[])
        }

        pub(crate) fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
            self.push("", kind::ARRAY, 0, false, 0, &[elem, index, n])
        }

        pub(crate) fn fwd(&mut self, name: &str) -> u32 {
            self.push(name, kind::FWD, 0, false, 0, &[])
        }

        /// `members`: (name or "" for anonymous, type id, bit offset).
        pub(crate) fn struct_(
            &mut self,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            self.composite(kind::STRUCT, name, size, members)
        }

        pub(crate) fn union_(
            &mut self,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            self.composite(kind::UNION, name, size, members)
        }

        fn composite(
            &mut self,
            kind: u8,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let mut extra = Vec::new();
            for (m, ty, off) in members {
                extra.extend([self.str(m), *ty, *off]);
            }
            self.push(name, kind, members.len(), false, size, &extra)
        }

        /// kind_flag struct: `members` are (name, type, bit offset, bitfield bits).
        pub(crate) fn struct_bitfields(
            &mut self,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let mut extra = Vec::new();
            for (m, ty, off, bits) in members {
                extra.extend([self.str(m), *ty, (bits << 24) | off]);
            }
            self.push(name, kind::STRUCT, members.len(), true, size, &extra)
        }

        pub(crate) fn enum_(&mut self, name: &str, signed: bool, variants: &[(&str, i32)]) -> u32 {
            let mut extra = Vec::new();
            for (v, val) in variants {
                extra.extend([self.str(v), *val as u32]);
            }
            self.push(name, kind::ENUM, variants.len(), signed, 4, &extra)
        }

        pub(crate) fn enum64(&mut self, name: &str, signed: bool, variants: &[(&str, i64)]) -> u32 {
            let mut extra = Vec::new();
            for (v, val) in variants {
                let raw = *val as u64;
                extra.extend([self.str(v), raw as u32, (raw >> 32) as u32]);
            }
            self.push(name, kind::ENUM64, variants.len(), signed, 8, &extra)
        }

        /// One of each kind the lookups never use, to exercise the skipping of
        /// their trailing data.
        pub(crate) fn noise(&mut self, int: u32) {
            let arg = self.str("arg");
            let proto = self.push("", kind::FUNC_PROTO, 2, false, int, &[arg, int, 0, int]);
            self.push("some_func", kind::FUNC, 0, false, proto, &[]);
            let var = self.push("some_var", kind::VAR, 0, false, int, &[1]);
            self.push(".data..percpu", kind::DATASEC, 1, false, 8, &[var, 0, 4]);
            self.push("double", kind::FLOAT, 0, false, 8, &[]);
            self.push("some_tag", kind::DECL_TAG, 0, false, var, &[u32::MAX]);
            self.push("rcu", kind::TYPE_TAG, 0, false, int, &[]);
            self.push("", kind::RESTRICT, 0, false, int, &[]);
        }

        pub(crate) fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&super::MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for word in [
                super::HEADER_LEN as u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&word.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::builder::BtfBuilder;
    use super::*;

    /// A miniature `struct sock`: anonymous unions in `sock_common`, a
    /// `possible_net_t`-style typedef wrapper, a volatile member, an array.
    fn sample() -> Vec<u8> {
        let mut b = BtfBuilder::new();
        let u8_ = b.int("unsigned char", 1);
        let u16_ = b.int("short unsigned int", 2);
        let u32_ = b.int("unsigned int", 4);
        let be32 = b.typedef("__be32", u32_);
        let fwd_net = b.fwd("net");
        let pnet = b.ptr(fwd_net);
        let wrapper = b.struct_("", 8, &[("net", pnet, 0)]);
        let possible_net = b.typedef("possible_net_t", wrapper);
        let addrpair = b.struct_(
            "",
            8,
            &[("skc_daddr", be32, 0), ("skc_rcv_saddr", be32, 32)],
        );
        let anon_union = b.union_("", 8, &[("skc_addrpair", u32_, 0), ("", addrpair, 0)]);
        let ports = b.struct_("", 4, &[("skc_dport", u16_, 0), ("skc_num", u16_, 16)]);
        let ports_union = b.union_("", 4, &[("skc_portpair", u32_, 0), ("", ports, 0)]);
        let vol_state = b.volatile(u8_);
        let idx = b.int("int", 4);
        let v6 = b.array(u8_, idx, 16);
        let common = b.struct_(
            "sock_common",
            48,
            &[
                ("", anon_union, 0),
                ("", ports_union, 64),
                ("skc_state", vol_state, 96),
                ("skc_net", possible_net, 128),
                ("skc_v6_daddr", v6, 192),
            ],
        );
        let const_common = b.konst(common);
        b.noise(u32_);
        b.fwd("sock");
        b.struct_(
            "sock",
            64,
            &[("__sk_common", const_common, 0), ("sk_err", idx, 384)],
        );
        b.build()
    }

    #[test]
    fn nested_anonymous_members_and_wrappers() {
        let btf = Btf::from_bytes(&sample()).unwrap();
        assert_eq!(
            btf.member_offset("sock", "__sk_common.skc_daddr").unwrap(),
            0
        );
        assert_eq!(
            btf.member_offset("sock", "__sk_common.skc_rcv_saddr")
                .unwrap(),
            4
        );
        assert_eq!(
            btf.member_offset("sock", "__sk_common.skc_dport").unwrap(),
            8
        );
        assert_eq!(
            btf.member_offset("sock", "__sk_common.skc_num").unwrap(),
            10
        );
        assert_eq!(
            btf.member("sock", "__sk_common.skc_state").unwrap(),
            Member {
                offset: 12,
                size: 1
            }
        );
        assert_eq!(
            btf.member_offset("sock", "__sk_common.skc_net").unwrap(),
            16
        );
        assert_eq!(
            btf.member("sock", "__sk_common.skc_net.net").unwrap(),
            Member {
                offset: 16,
                size: 8
            }
        );
        assert_eq!(
            btf.member("sock", "__sk_common.skc_v6_daddr").unwrap(),
            Member {
                offset: 24,
                size: 16
            }
        );
        assert_eq!(btf.member_offset("sock", "sk_err").unwrap(), 48);
        assert_eq!(btf.member_offset("sock_common", "skc_num").unwrap(), 10);
    }

    #[test]
    fn lookup_errors() {
        let btf = Btf::from_bytes(&sample()).unwrap();
        assert!(matches!(
            btf.member_offset("tcp_sock", "x"),
            Err(BtfError::MissingType { name }) if name == "tcp_sock"
        ));
        // Only a FWD exists for `net`: not a struct with members.
        assert!(matches!(
            btf.member_offset("net", "ns"),
            Err(BtfError::MissingType { .. })
        ));
        assert!(matches!(
            btf.member_offset("sock", "__sk_common.skc_nope"),
            Err(BtfError::MissingMember { ty, member }) if ty == "sock.__sk_common" && member == "skc_nope"
        ));
        assert!(matches!(
            btf.member_offset("sock", "sk_err.x"),
            Err(BtfError::NotComposite { .. })
        ));
        // The pointer inside possible_net_t points at a FWD: cannot descend.
        assert!(btf
            .member_offset("sock", "__sk_common.skc_net.net.ns")
            .is_err());
        assert!(btf.member_offset("sock", "").is_err());
        assert!(btf.member_offset("sock", "sk_err.").is_err());
    }

    #[test]
    fn struct_preferred_over_fwd_and_union() {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        b.fwd("thing");
        b.union_("thing", 4, &[("u", int, 0)]);
        b.struct_("thing", 8, &[("a", int, 0), ("b", int, 32)]);
        b.fwd("thing");
        let btf = Btf::from_bytes(&b.build()).unwrap();
        assert_eq!(btf.member_offset("thing", "b").unwrap(), 4);
    }

    #[test]
    fn bitfields() {
        let mut b = BtfBuilder::new();
        let u8_ = b.int("u8", 1);
        let u16_ = b.int("u16", 2);
        let u32_ = b.int("u32", 4);
        b.struct_bitfields(
            "bits",
            8,
            &[
                ("a", u8_, 0, 3),
                ("b", u8_, 3, 5),
                ("whole", u16_, 8, 16),
                ("c", u32_, 24, 8),
                ("plain", u32_, 32, 0),
            ],
        );
        let old_style = b.int_bits("u32", 4, 4, 4);
        b.struct_("legacy", 4, &[("x", u32_, 0), ("y", old_style, 0)]);
        let btf = Btf::from_bytes(&b.build()).unwrap();
        assert!(matches!(
            btf.member("bits", "a"),
            Err(BtfError::Bitfield {
                bit_offset: 0,
                bits: 3,
                ..
            })
        ));
        assert!(matches!(
            btf.member("bits", "b"),
            Err(BtfError::Bitfield {
                bit_offset: 3,
                bits: 5,
                ..
            })
        ));
        assert_eq!(
            btf.member("bits", "whole").unwrap(),
            Member { offset: 1, size: 2 }
        );
        assert_eq!(
            btf.member("bits", "c").unwrap(),
            Member { offset: 3, size: 1 }
        );
        assert_eq!(
            btf.member("bits", "plain").unwrap(),
            Member { offset: 4, size: 4 }
        );
        assert_eq!(
            btf.member("legacy", "x").unwrap(),
            Member { offset: 0, size: 4 }
        );
        assert!(matches!(
            btf.member("legacy", "y"),
            Err(BtfError::Bitfield {
                bit_offset: 4,
                bits: 4,
                ..
            })
        ));
    }

    #[test]
    fn enums() {
        let mut b = BtfBuilder::new();
        b.enum_(
            "iter_type",
            false,
            &[("ITER_UBUF", 0), ("ITER_IOVEC", 1), ("ITER_KVEC", 3)],
        );
        b.enum_("signed_one", true, &[("MINUS", -2)]);
        b.enum_("unsigned_one", false, &[("BIG", -2)]);
        b.enum64("wide", false, &[("HUGE", 1 << 40)]);
        b.enum64("wide_signed", true, &[("NEG", -(1 << 40))]);
        let btf = Btf::from_bytes(&b.build()).unwrap();
        assert_eq!(btf.enum_value("iter_type", "ITER_UBUF").unwrap(), 0);
        assert_eq!(btf.enum_value("iter_type", "ITER_IOVEC").unwrap(), 1);
        assert_eq!(btf.enum_value("iter_type", "ITER_KVEC").unwrap(), 3);
        assert_eq!(btf.enum_value("signed_one", "MINUS").unwrap(), -2);
        assert_eq!(btf.enum_value("unsigned_one", "BIG").unwrap(), 0xffff_fffe);
        assert_eq!(btf.enum_value("wide", "HUGE").unwrap(), 1 << 40);
        assert_eq!(btf.enum_value("wide_signed", "NEG").unwrap(), -(1 << 40));
        assert!(matches!(
            btf.enum_value("iter_type", "ITER_NOPE"),
            Err(BtfError::MissingVariant { .. })
        ));
        assert!(matches!(
            btf.enum_value("nope", "X"),
            Err(BtfError::MissingType { .. })
        ));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let good = sample();
        assert!(Btf::from_bytes(&good).is_ok());
        // Every truncation.
        for len in 0..good.len() {
            assert!(
                Btf::from_bytes(&good[..len]).is_err(),
                "truncated to {len} parsed"
            );
        }
        // Every single-byte corruption: may parse or not, must not panic, and
        // lookups on what parses must not panic either.
        for i in 0..good.len() {
            for v in [0x00, 0xff, 0x7f, 0x13] {
                let mut bad = good.clone();
                bad[i] = v;
                if let Ok(btf) = Btf::from_bytes(&bad) {
                    let _ = btf.member("sock", "__sk_common.skc_net.net");
                    let _ = btf.member("sock", "__sk_common.skc_v6_daddr");
                    let _ = btf.member("sock", "sk_err");
                }
            }
        }
        let mut big_endian = good.clone();
        big_endian[..2].copy_from_slice(&MAGIC.to_be_bytes());
        assert!(
            matches!(Btf::from_bytes(&big_endian), Err(BtfError::Malformed { what }) if what.contains("big-endian"))
        );
    }

    #[test]
    fn cycles_are_errors() {
        let mut b = BtfBuilder::new();
        // Type 1 is a typedef of itself; type 2 is a struct whose anonymous
        // member is itself.
        b.typedef("loop", 1);
        b.struct_("selfish", 4, &[("", 2, 0)]);
        b.struct_("holder", 4, &[("l", 1, 0)]);
        let btf = Btf::from_bytes(&b.build()).unwrap();
        assert!(matches!(
            btf.member("selfish", "x"),
            Err(BtfError::Malformed { .. })
        ));
        assert!(matches!(
            btf.member("holder", "l"),
            Err(BtfError::Malformed { .. })
        ));
        assert!(matches!(
            btf.member("holder", "l.x"),
            Err(BtfError::Malformed { .. })
        ));
    }

    /// Every path `layout::build_config` needs, against the running kernel.
    #[test]
    fn running_kernel_vmlinux() {
        if !Path::new(VMLINUX_PATH).exists() {
            eprintln!("SKIPPED: no {VMLINUX_PATH}");
            return;
        }
        let start = std::time::Instant::now();
        let btf = Btf::from_file(VMLINUX_PATH).unwrap();
        let parsed = start.elapsed();
        let paths = [
            ("sock", "__sk_common.skc_net.net"),
            ("net", "ns.inum"),
            ("sock", "sk_err"),
            ("sock", "__sk_common.skc_state"),
            ("sock", "__sk_common.skc_daddr"),
            ("sock", "__sk_common.skc_rcv_saddr"),
            ("sock", "__sk_common.skc_dport"),
            ("sock", "__sk_common.skc_num"),
            ("sock", "__sk_common.skc_family"),
            ("sock", "__sk_common.skc_v6_daddr"),
            ("sock", "__sk_common.skc_v6_rcv_saddr"),
            ("tcp_sock", "bytes_received"),
            ("tcp_sock", "bytes_acked"),
            ("tcp_sock", "lsndtime"),
            ("tcp_sock", "rcv_nxt"),
            ("tcp_sock", "copied_seq"),
            ("tcp_sock", "write_seq"),
            ("tcp_sock", "snd_una"),
            ("inet_connection_sock", "icsk_ack.lrcvtime"),
            ("task_struct", "flags"),
            ("msghdr", "msg_iter"),
            ("iov_iter", "iter_type"),
            ("iov_iter", "iov_offset"),
            ("iov_iter", "ubuf"),
            ("iov_iter", "__iov"),
        ];
        for (ty, path) in paths {
            btf.member(ty, path)
                .unwrap_or_else(|e| panic!("{ty}.{path}: {e}"));
        }
        let ubuf = btf.enum_value("iter_type", "ITER_UBUF").unwrap();
        let iovec = btf.enum_value("iter_type", "ITER_IOVEC").unwrap();
        eprintln!(
            "vmlinux BTF: {} types, parsed in {parsed:?}, parsed + {} lookups in {:?}",
            btf.types.len(),
            paths.len() + 2,
            start.elapsed()
        );
        // Stable since sock_common gained skc_addrpair/skc_portpair (v3.x),
        // include/net/sock.h.
        assert_eq!(btf.member_offset("sock_common", "skc_daddr").unwrap(), 0);
        assert_eq!(
            btf.member_offset("sock_common", "skc_rcv_saddr").unwrap(),
            4
        );
        assert_eq!(btf.member_offset("sock_common", "skc_dport").unwrap(), 12);
        assert_eq!(btf.member_offset("sock_common", "skc_num").unwrap(), 14);
        assert_eq!(btf.member("sock_common", "skc_family").unwrap().size, 2);
        assert_eq!(btf.member("sock", "__sk_common.skc_state").unwrap().size, 1);
        assert_eq!(btf.member("tcp_sock", "bytes_received").unwrap().size, 8);
        assert_eq!(btf.member("tcp_sock", "lsndtime").unwrap().size, 4);
        // The TCP slab's object size (/proc/slabinfo "TCP", 2,368 on 6.18)
        // is sizeof(struct tcp_sock) rounded up to the cache line.
        let tcp_sock = btf.struct_size("tcp_sock").unwrap();
        assert!((2048..4096).contains(&tcp_sock), "{tcp_sock}");
        assert!(tcp_sock > btf.struct_size("sock").unwrap());
        // `ubuf` and `__iov` share one union (include/linux/uio.h, v6.4+).
        assert_eq!(
            btf.member_offset("iov_iter", "ubuf").unwrap(),
            btf.member_offset("iov_iter", "__iov").unwrap()
        );
        assert_eq!((ubuf, iovec), (0, 1));
        if let Ok(reasons) = btf.enum_variants("sk_rst_reason") {
            // include/net/rstreason.h (v6.10+): NOT_SPECIFIED is 0.
            assert_eq!(reasons[0], ("SK_RST_REASON_NOT_SPECIFIED".to_owned(), 0));
        }
    }
}
