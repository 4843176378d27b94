//! Builds the eBPF object (`ebpf/`) with the nightly toolchain and bpf-linker, and leaves it in
//! `OUT_DIR/bridle` for the loader to embed.

fn main() -> anyhow::Result<()> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest).join("../ebpf");
    let root = root.canonicalize()?;
    let root = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("the ebpf path is not UTF-8"))?;
    println!("cargo::rerun-if-changed={root}/src");
    println!("cargo::rerun-if-changed={root}/common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "bridle-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
