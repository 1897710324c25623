//! Builds the kernels in `kernels/*.cu`, twice:
//!
//! 1. For the GPU: nvcc compiles all of them (one translation unit that includes each file)
//!    into one fatbin with SASS for sm_75, sm_80, sm_86, sm_89 and sm_90 and PTX for the newest,
//!    embedded in the binary with `include_bytes!`. Without nvcc the build goes on without GPU
//!    kernels (a cargo warning says so); `SCRATCHNET_REQUIRE_NVCC=1` makes a missing nvcc or a
//!    compile error fail the build. `SCRATCHNET_CUDA_ARCHS=90` (or `80,90`) narrows the
//!    architectures for a faster build.
//! 2. For the emulator: the C++ compiler compiles the same sources against
//!    `kernels/emu/cuda_emu.h`, with the emulator runtime, into a static library.
//!    `SCRATCHNET_EMU_ASAN=1` builds it with AddressSanitizer.
//!
//! It also reads the signature of every `__global__` function and generates, from that one
//! source of truth, the emulator's launch wrappers (C++) and the table of kernels and
//! parameter kinds the host checks its launches against (Rust).

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

// The kinds of kernel parameters: the library's own declaration, compiled here too, so that
// the table of kernels written below names variants the library has.
#[path = "src/device/arg_kind.rs"]
mod arg_kind;
use arg_kind::ArgKind;

/// Architectures compiled by default: Turing, Ampere (A100, consumer), Ada, Hopper.
const DEFAULT_ARCHS: &[&str] = &["75", "80", "86", "89", "90"];

/// The nvcc the project is pinned to: the GPUs we test on run driver 580 (CUDA 13.0), which
/// cannot load PTX made by a newer nvcc.
const PINNED_NVCC_RELEASE: &str = "13.0";

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kernel_dir = root.join("kernels");

    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "SCRATCHNET_REQUIRE_NVCC",
        "SCRATCHNET_CUDA_ARCHS",
        "SCRATCHNET_EMU_ASAN",
        "SCRATCHNET_PTXAS_VERBOSE",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo::rustc-check-cfg=cfg(scratchnet_emu_asan)");

    let gpu_sources = cu_files(&kernel_dir);
    let emu_test_sources = cu_files(&kernel_dir.join("emu").join("tests"));
    let mut emu_support: Vec<PathBuf> = Vec::new();
    for dir in [kernel_dir.join("emu")] {
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                let p = e.path();
                if matches!(p.extension().and_then(|s| s.to_str()), Some("cpp" | "S" | "h" | "hpp")) {
                    emu_support.push(p);
                }
            }
        }
    }
    emu_support.sort();
    for f in gpu_sources.iter().chain(&emu_test_sources).chain(&emu_support) {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    println!("cargo:rerun-if-changed={}", kernel_dir.join("common.cuh").display());
    println!("cargo:rerun-if-changed={}", kernel_dir.display());
    println!("cargo:rerun-if-changed={}", root.join("src").join("device").join("arg_kind.rs").display());

    // Signatures: one parse, two generated files.
    let mut kernels = Vec::new();
    for (files, emu_only) in [(&gpu_sources, false), (&emu_test_sources, true)] {
        for f in files {
            let src = fs::read_to_string(f).unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", f.display())));
            match parse_kernels(&src) {
                Ok(found) => kernels.extend(found.into_iter().map(|k| (k, file_name(f), emu_only))),
                Err(e) => fail(&format!("{}: {e}", f.display())),
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (k, file, _) in &kernels {
        if !seen.insert(k.name.clone()) {
            fail(&format!("kernel {} is defined twice (again in {file})", k.name));
        }
    }
    write_if_changed(&out.join("emu_registry.cpp"), &emu_registry(&kernels));

    build_emulator(&kernel_dir, &gpu_sources, &emu_test_sources, &emu_support, &out);

    let archs = build_fatbin(&root, &kernel_dir, &gpu_sources, &out);
    write_if_changed(&out.join("kernel_table.rs"), &rust_table(&kernels, &archs));
}

fn fail(msg: &str) -> ! {
    // A panic in a build script fails the build and shows the message.
    panic!("\n{msg}\n")
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

fn cu_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|it| {
            it.flatten().map(|e| e.path()).filter(|p| p.extension().and_then(|s| s.to_str()) == Some("cu")).collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn write_if_changed(path: &Path, content: &str) {
    if fs::read_to_string(path).ok().as_deref() != Some(content) {
        fs::write(path, content).unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", path.display())));
    }
}

// ---------------------------------------------------------------------------------------
// Kernel signatures

struct Param {
    /// The C++ type as written, without `__restrict__` and the name.
    ctype: String,
    kind: ArgKind,
}

struct Kernel {
    name: String,
    params: Vec<Param>,
}

/// Removes `//` and `/* */` comments (kernel sources have no string literals that contain them).
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'/' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && i + 1 < b.len() && b[i + 1] == b'*' {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
            out.push(' ');
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i] as char).is_whitespace() {
        i += 1;
    }
    i
}

fn ident_at(b: &[u8], i: usize) -> (String, usize) {
    let mut j = i;
    while j < b.len() && ((b[j] as char).is_alphanumeric() || b[j] == b'_') {
        j += 1;
    }
    (String::from_utf8_lossy(&b[i..j]).into_owned(), j)
}

/// Index just past the parenthesis that closes the one at `open`.
fn matching_paren(b: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0;
    for (k, &c) in b.iter().enumerate().skip(open) {
        match c {
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(k + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// Finds every `extern "C" __global__ void name(params) {` definition.
fn parse_kernels(src: &str) -> Result<Vec<Kernel>, String> {
    let text = strip_comments(src);
    let b = text.as_bytes();
    let mut kernels = Vec::new();
    let mut from = 0;
    while let Some(pos) = text[from..].find("__global__") {
        let at = from + pos;
        from = at + "__global__".len();
        // Only whole words count.
        if at > 0 && ((b[at - 1] as char).is_alphanumeric() || b[at - 1] == b'_') {
            continue;
        }
        let line_start = text[..at].rfind(['\n', ';', '}']).map_or(0, |p| p + 1);
        let before = &text[line_start..at];
        let mut i = skip_ws(b, from);
        let (mut word, mut next) = ident_at(b, i);
        if word == "__launch_bounds__" {
            let open = skip_ws(b, next);
            next = matching_paren(b, open).ok_or("unbalanced __launch_bounds__")?;
            i = skip_ws(b, next);
            (word, next) = ident_at(b, i);
        }
        if word != "void" {
            return Err(format!("a __global__ function must return void (found '{word}')"));
        }
        i = skip_ws(b, next);
        let (mut name, mut after_name) = ident_at(b, i);
        if name == "__launch_bounds__" {
            // Also allowed after the return type.
            let open = skip_ws(b, after_name);
            let close = matching_paren(b, open).ok_or("unbalanced __launch_bounds__")?;
            i = skip_ws(b, close);
            (name, after_name) = ident_at(b, i);
        }
        if name.is_empty() {
            return Err("cannot read the name of a __global__ function".into());
        }
        if !before.contains("extern \"C\"") {
            return Err(format!("kernel {name} must be declared extern \"C\" so the host can find it by name"));
        }
        let open = skip_ws(b, after_name);
        if b.get(open) != Some(&b'(') {
            return Err(format!("kernel {name}: expected '(' after the name"));
        }
        let close = matching_paren(b, open).ok_or_else(|| format!("kernel {name}: unbalanced parameters"))?;
        let body = skip_ws(b, close);
        if b.get(body) == Some(&b';') {
            continue; // a declaration; the definition is read where it stands
        }
        let params_text = &text[open + 1..close - 1];
        let mut params = Vec::new();
        for raw in params_text.split(',') {
            let p = raw.split_whitespace().collect::<Vec<_>>().join(" ");
            if p.is_empty() || p == "void" {
                continue;
            }
            params.push(parse_param(&name, &p)?);
        }
        kernels.push(Kernel { name, params });
    }
    Ok(kernels)
}

fn parse_param(kernel: &str, p: &str) -> Result<Param, String> {
    if p.contains('[') || p.contains('<') || p.contains('&') || p.contains('=') {
        return Err(format!("kernel {kernel}: parameter '{p}' is not a plain scalar or pointer"));
    }
    // The name is the last identifier; the type is what precedes it.
    let cleaned = p.replace("__restrict__", " ").replace('*', " * ");
    let mut words: Vec<&str> = cleaned.split_whitespace().collect();
    let name = words.pop().ok_or_else(|| format!("kernel {kernel}: empty parameter"))?;
    if name == "*" || words.is_empty() {
        return Err(format!("kernel {kernel}: parameter '{p}' needs a name"));
    }
    let ctype = words.join(" ").replace(" *", "*");
    let kind = ArgKind::from_c_type(&ctype).map_err(|other| {
        format!(
            "kernel {kernel}: parameter type '{other}' is not supported (use a pointer, int, unsigned, long long, unsigned long long, float or double)"
        )
    })?;
    Ok(Param { ctype, kind })
}

fn emu_registry(kernels: &[(Kernel, String, bool)]) -> String {
    let mut s = String::from(
        "// Generated by build.rs from the kernel signatures. Do not edit.\n\
         // One wrapper per kernel unpacks the argument array exactly as cuLaunchKernel's\n\
         // kernelParams: args[i] points at the value of parameter i.\n\
         #include \"common.cuh\"\n\n\
         using scratchnet_registry_fn = void (*)(void** args);\n\n",
    );
    for (k, _, _) in kernels {
        let types: Vec<&str> = k.params.iter().map(|p| p.ctype.as_str()).collect();
        let _ = writeln!(s, "extern \"C\" void {}({});", k.name, types.join(", "));
        let unpack: Vec<String> =
            k.params.iter().enumerate().map(|(i, p)| format!("*({}*)args[{i}]", p.ctype)).collect();
        let _ = writeln!(
            s,
            "static void scratchnet_wrap_{}(void** args) {{ {}({}); }}\n",
            k.name,
            k.name,
            unpack.join(", ")
        );
    }
    s.push_str("extern \"C\" const scratchnet_registry_fn scratchnet_emu_kernel_fns[] = {\n");
    for (k, _, _) in kernels {
        let _ = writeln!(s, "    scratchnet_wrap_{},", k.name);
    }
    s.push_str("    nullptr,\n};\n");
    s
}

fn rust_table(kernels: &[(Kernel, String, bool)], archs: &[String]) -> String {
    let mut s = String::from("// Generated by build.rs from the kernel signatures. Do not edit.\n\n");
    s.push_str("/// Every kernel, in the order of the emulator's wrapper table.\n");
    s.push_str("pub const KERNELS: &[KernelInfo] = &[\n");
    for (k, file, emu_only) in kernels {
        let kinds: Vec<String> = k.params.iter().map(|p| format!("ArgKind::{:?}", p.kind)).collect();
        let _ = writeln!(
            s,
            "    KernelInfo {{ name: {:?}, file: {:?}, emu_only: {emu_only}, params: &[{}] }},",
            k.name,
            file,
            kinds.join(", ")
        );
    }
    s.push_str("];\n\n");
    let list: Vec<String> = archs.iter().map(|a| format!("{a:?}")).collect();
    let _ = writeln!(
        s,
        "/// Architectures the embedded fatbin has SASS for (empty: built without nvcc).\npub const CUDA_ARCHS: &[&str] = &[{}];",
        list.join(", ")
    );
    s
}

// ---------------------------------------------------------------------------------------
// The emulator library

fn build_emulator(kernel_dir: &Path, gpu: &[PathBuf], tests: &[PathBuf], support: &[PathBuf], out: &Path) {
    let asan = env::var("SCRATCHNET_EMU_ASAN").is_ok_and(|v| v == "1");
    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++20")
        .include(kernel_dir)
        .opt_level(2)
        .debug(asan)
        .warnings(false)
        .flag_if_supported("-fno-strict-aliasing")
        // The kernel files end in .cu; tell the compiler they are C++.
        .flag("-xc++");
    for f in gpu.iter().chain(tests) {
        b.file(f);
    }
    for f in support {
        if matches!(f.extension().and_then(|s| s.to_str()), Some("cpp" | "S")) {
            b.file(f);
        }
    }
    b.file(out.join("emu_registry.cpp"));
    if asan {
        b.flag("-fsanitize=address").flag("-fno-omit-frame-pointer");
        println!("cargo:rustc-link-lib=dylib=asan");
        println!("cargo:rustc-cfg=scratchnet_emu_asan");
        println!(
            "cargo:warning=the emulator is built with AddressSanitizer: run with LD_PRELOAD=$(gcc -print-file-name=libasan.so)"
        );
    }
    b.compile("scratchnet_emu");
    println!("cargo:rustc-link-lib=dylib=pthread");
}

// ---------------------------------------------------------------------------------------
// The fatbin

/// Compiles the fatbin if nvcc can be found; returns the architectures it holds SASS for.
fn build_fatbin(root: &Path, kernel_dir: &Path, sources: &[PathBuf], out: &Path) -> Vec<String> {
    let fatbin = out.join("kernels.fatbin");
    // What ptxas said of each kernel (registers, stack, spills), for the test that no kernel
    // keeps values in local memory by accident; empty without nvcc.
    let report = out.join("ptxas_report.txt");
    let required = env::var("SCRATCHNET_REQUIRE_NVCC").is_ok_and(|v| v == "1");
    let give_up = |msg: &str| -> Vec<String> {
        if required {
            fail(&format!("{msg}\n(SCRATCHNET_REQUIRE_NVCC=1 makes this an error)"));
        }
        for line in msg.lines() {
            println!("cargo:warning={line}");
        }
        // An empty fatbin: the CUDA device reports that no kernels were compiled.
        write_if_changed_bytes(&fatbin, &[]);
        write_if_changed_bytes(&report, &[]);
        Vec::new()
    };

    let Some(nvcc) = find_nvcc(root) else {
        return give_up(
            "nvcc not found: building without GPU kernels (cpu and emu still work). \
             Run scripts/setup-cuda.sh, or set NVCC or CUDA_HOME.",
        );
    };
    match Command::new(&nvcc).arg("--version").output() {
        Ok(o) => {
            let v = String::from_utf8_lossy(&o.stdout);
            if !v.contains(&format!("release {PINNED_NVCC_RELEASE}")) {
                println!(
                    "cargo:warning={} is not CUDA {PINNED_NVCC_RELEASE}: PTX it makes may not load on driver 580",
                    nvcc.display()
                );
            }
        }
        Err(e) => return give_up(&format!("cannot run {}: {e}", nvcc.display())),
    }

    let archs: Vec<String> = match env::var("SCRATCHNET_CUDA_ARCHS") {
        Ok(list) if !list.trim().is_empty() => {
            list.split(',').map(|a| a.trim().trim_start_matches("sm_").to_string()).filter(|a| !a.is_empty()).collect()
        }
        _ => DEFAULT_ARCHS.iter().map(|s| s.to_string()).collect(),
    };
    if let Some(bad) = archs.iter().find(|a| a.parse::<u32>().is_err()) {
        fail(&format!("SCRATCHNET_CUDA_ARCHS: '{bad}' is not an architecture number like 90"));
    }

    // One translation unit that includes every kernel file: one fatbin, one module to load.
    let mut umbrella = String::from("// Generated by build.rs: every kernel file in one translation unit.\n");
    for s in sources {
        let _ = writeln!(umbrella, "#include \"{}\"", s.display());
    }
    let unit = out.join("all_kernels.cu");
    write_if_changed(&unit, &umbrella);

    let mut cmd = Command::new(&nvcc);
    cmd.arg("-fatbin")
        .arg("-O3")
        .arg("-std=c++17")
        .arg("-lineinfo")
        .arg("--threads")
        .arg("0")
        .arg("-I")
        .arg(kernel_dir);
    let newest = archs.iter().max_by_key(|a| a.parse::<u32>().unwrap_or(0)).cloned().unwrap_or_default();
    for a in &archs {
        if *a == newest {
            cmd.arg("-gencode").arg(format!("arch=compute_{a},code=[sm_{a},compute_{a}]"));
        } else {
            cmd.arg("-gencode").arg(format!("arch=compute_{a},code=sm_{a}"));
        }
    }
    let verbose = env::var("SCRATCHNET_PTXAS_VERBOSE").is_ok_and(|v| v == "1");
    cmd.arg("-Xptxas").arg("-v");
    cmd.arg("-o").arg(&fatbin).arg(&unit);
    match cmd.output() {
        Ok(o) if o.status.success() => {
            write_if_changed_bytes(&report, &o.stderr);
            if verbose {
                for line in String::from_utf8_lossy(&o.stderr).lines() {
                    println!("cargo:warning={line}");
                }
            }
            archs
        }
        Ok(o) => {
            let mut msg = format!("nvcc failed to compile the kernels ({}):\n", nvcc.display());
            msg.push_str(&String::from_utf8_lossy(&o.stdout));
            msg.push_str(&String::from_utf8_lossy(&o.stderr));
            give_up(&msg)
        }
        Err(e) => give_up(&format!("cannot run {}: {e}", nvcc.display())),
    }
}

fn write_if_changed_bytes(path: &Path, content: &[u8]) {
    if fs::read(path).ok().as_deref() != Some(content) {
        fs::write(path, content).unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", path.display())));
    }
}

/// `NVCC`, then `CUDA_HOME`/`CUDA_PATH`, then `PATH`, then the copy scripts/setup-cuda.sh
/// installs into `.cuda/`.
fn find_nvcc(root: &Path) -> Option<PathBuf> {
    let exists = |p: PathBuf| p.is_file().then_some(p);
    if let Some(p) = env::var_os("NVCC").map(PathBuf::from) {
        return exists(p);
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(p) = env::var_os(var).and_then(|h| exists(PathBuf::from(h).join("bin").join("nvcc"))) {
            return Some(p);
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            if let Some(p) = exists(dir.join("nvcc")) {
                return Some(p);
            }
        }
    }
    exists(root.join(".cuda").join("nvidia").join("cu13").join("bin").join("nvcc"))
}
