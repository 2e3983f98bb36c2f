// The cdylib gets a SONAME, so programs linked against it (meson, pkg-config users)
// record `libgstqtisocket.so` and find it in the library path, not a build-tree path.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libgstqtisocket.so");
}
