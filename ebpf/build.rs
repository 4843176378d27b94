//! Compiles the CO-RE accessors (`src/core.c`) to LLVM bitcode with clang and hands the
//! bitcode to bpf-linker, which links it into the program object with the Rust code.

use std::{env, path::PathBuf, process::Command};

fn main() {
    println!("cargo::rerun-if-changed=src/core.c");
    println!("cargo::rerun-if-env-changed=BRIDLE_CLANG");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bitcode = out_dir.join("core.bc");
    let clang = env::var("BRIDLE_CLANG").unwrap_or_else(|_| "clang-22".to_owned());
    let status = Command::new(&clang)
        .args([
            "-target",
            "bpf",
            "-O2",
            "-g",
            "-emit-llvm",
            "-c",
            "src/core.c",
            "-o",
        ])
        .arg(&bitcode)
        .status()
        .unwrap_or_else(|err| panic!("cannot run {clang} (run `cargo xtask setup`): {err}"));
    assert!(status.success(), "{clang} failed to compile src/core.c");
    println!("cargo::rustc-link-arg-bins={}", bitcode.display());
}
