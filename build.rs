//! Build script: with the `cuda` feature on, compiles distill's CUDA kernels
//! (`src/model/cuda/*.cu`) to PTX in `OUT_DIR`, where
//! `src/model/cuda/mod.rs` embeds them. Without the feature it does nothing,
//! so the CPU build never needs a CUDA toolkit.
//!
//! nvcc comes from `PATH`, else `$CUDA_ROOT/bin` or `$CUDA_PATH/bin`. The
//! PTX targets `compute_$CUDA_COMPUTE_CAP` (90, the H100/H200, when unset);
//! the driver compiles it for the GPU it runs on. PTX from an nvcc newer than
//! the driver is refused at load time (`CUDA_ERROR_UNSUPPORTED_PTX_VERSION`),
//! so build with the toolkit the GPU machine's driver supports.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const KERNEL_DIR: &str = "src/model/cuda";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed={KERNEL_DIR}");
    for var in ["CUDA_COMPUTE_CAP", "CUDA_ROOT", "CUDA_PATH", "NVCC"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".to_string());
    let cap = cap.trim().trim_start_matches("sm_").replace('.', "");
    if cap.is_empty() || !cap.chars().all(|c| c.is_ascii_digit()) {
        panic!("CUDA_COMPUTE_CAP='{cap}' is not a compute capability such as 90 or 8.6");
    }
    let nvcc = nvcc();
    let mut kernels: Vec<PathBuf> = std::fs::read_dir(KERNEL_DIR)
        .unwrap_or_else(|e| panic!("cannot list {KERNEL_DIR}: {e}"))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    kernels.sort();
    for src in &kernels {
        println!("cargo:rerun-if-changed={}", src.display());
        compile(&nvcc, src, &out_dir, &cap);
    }
}

/// nvcc from `$NVCC`, `PATH`, or the toolkit roots.
fn nvcc() -> PathBuf {
    if let Some(p) = env::var_os("NVCC") {
        return PathBuf::from(p);
    }
    let on_path = env::var_os("PATH").and_then(|paths| {
        env::split_paths(&paths)
            .map(|d| d.join("nvcc"))
            .find(|p| p.is_file())
    });
    let from_roots = || {
        ["CUDA_ROOT", "CUDA_PATH"]
            .iter()
            .filter_map(env::var_os)
            .map(|root| Path::new(&root).join("bin").join("nvcc"))
            .find(|p| p.is_file())
    };
    on_path.or_else(from_roots).unwrap_or_else(|| {
        panic!(
            "the cuda feature needs nvcc (a CUDA 12 or 13 toolkit) on PATH or in $CUDA_ROOT/bin; \
             without one, `source ../shared/tools/cuda-env.sh` assembles CUDA 13.0 (README.md, GPU)"
        )
    })
}

/// `src` to `OUT_DIR/<stem>.ptx`.
fn compile(nvcc: &Path, src: &Path, out_dir: &Path, cap: &str) {
    let stem = src.file_stem().expect("a .cu file has a name");
    let out = out_dir.join(stem).with_extension("ptx");
    let output = Command::new(nvcc)
        .arg("--ptx")
        .arg(format!("--gpu-architecture=compute_{cap}"))
        .arg("-O3")
        .arg("-o")
        .arg(&out)
        .arg(src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
    if !output.status.success() {
        panic!(
            "nvcc failed on {}:\n{}{}",
            src.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
