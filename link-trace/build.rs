use std::path::Path;

/// Builds the eBPF crate for bpfel-unknown-none with the nightly toolchain
/// and bpf-linker (`cargo xtask setup` installs both).
fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest_dir).join("../link-trace-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {ebpf_dir:?}"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "link-trace-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
