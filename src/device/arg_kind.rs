//! How a kernel parameter is passed, declared once for both sides of the build.
//!
//! build.rs compiles this file as a module of its own (`#[path]`): it reads the type of every
//! parameter of every `__global__` signature into an [`ArgKind`], and writes the table of
//! kernels ([`super::kernels::KERNELS`]) with each kind's `Debug` name (`ArgKind::Ptr`, …).
//! The library checks every launch's arguments against that table. With one declaration the
//! names build.rs writes are always names of this enum.
//!
//! So that build.rs can compile it, this file uses nothing of the crate: `std` only.

/// How one kernel parameter is passed: a device pointer or a scalar of a given type. The host
/// packs its arguments in these kinds, and the emulator's launch wrapper unpacks them as the
/// C++ types of the signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgKind {
    Ptr,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
}

impl ArgKind {
    /// The kind of a kernel parameter of C++ type `ctype`, as the signature writes it without
    /// `__restrict__` and the name (`const float*`, `unsigned long long`). A type kernels may
    /// not take is the error, without its `const`.
    pub fn from_c_type(ctype: &str) -> Result<ArgKind, String> {
        if ctype.contains('*') {
            return Ok(ArgKind::Ptr);
        }
        let base: Vec<&str> = ctype.split_whitespace().filter(|w| *w != "const").collect();
        match base.join(" ").as_str() {
            "int" | "signed" | "signed int" | "int32_t" => Ok(ArgKind::I32),
            "unsigned" | "unsigned int" | "uint32_t" => Ok(ArgKind::U32),
            "long long" | "long long int" | "int64_t" => Ok(ArgKind::I64),
            "unsigned long long" | "unsigned long long int" | "uint64_t" => Ok(ArgKind::U64),
            "float" => Ok(ArgKind::F32),
            "double" => Ok(ArgKind::F64),
            other => Err(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_types_read_as_the_kinds_the_host_packs() {
        assert_eq!(ArgKind::from_c_type("const float*"), Ok(ArgKind::Ptr));
        assert_eq!(ArgKind::from_c_type("long long*"), Ok(ArgKind::Ptr));
        assert_eq!(ArgKind::from_c_type("const int"), Ok(ArgKind::I32));
        assert_eq!(ArgKind::from_c_type("unsigned"), Ok(ArgKind::U32));
        assert_eq!(ArgKind::from_c_type("long long"), Ok(ArgKind::I64));
        assert_eq!(ArgKind::from_c_type("const unsigned long long"), Ok(ArgKind::U64));
        assert_eq!(ArgKind::from_c_type("float"), Ok(ArgKind::F32));
        assert_eq!(ArgKind::from_c_type("double"), Ok(ArgKind::F64));
        assert_eq!(ArgKind::from_c_type("const short"), Err("short".to_string()));
        // The kernel table is written with these names.
        assert_eq!(format!("ArgKind::{:?}", ArgKind::U64), "ArgKind::U64");
    }
}
