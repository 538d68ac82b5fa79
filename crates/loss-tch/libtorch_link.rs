// Link settings for every binary, test and example that links libtorch; `include!`d by the
// build scripts of the crates that have such targets (a build script's link arguments reach
// only its own package's targets).
//
// - an rpath to libtorch's lib/, so binaries run without LD_LIBRARY_PATH;
// - with a CUDA libtorch, `libtorch_cuda.so` linked with --no-as-needed: nothing references it
//   by symbol, so the linker would drop it and CUDA would silently be missing at run time.
//
// The lib directory comes from torch-sys (`cargo:libtorch_lib`, seen as
// DEP_TCH_LIBTORCH_LIB by direct dependents of torch-sys).
fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    // Absent when torch-sys is not a dependency of this build (the facade without `tch`).
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    let target = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target != "linux" && target != "macos" {
        return;
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{lib}");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
