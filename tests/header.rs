//! include/qsock.h is generated from src/ffi and checked in; this fails when it is stale.
//! `scripts/regen-header` (QSOCK_REGENERATE_HEADER=1) rewrites it instead.

use std::path::Path;

#[test]
fn checked_in_header_matches_the_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(root)
        .with_config(config)
        .generate()
        .expect("cbindgen could not read src/ffi")
        .write(&mut generated);
    let header = root.join("include/qsock.h");
    if std::env::var_os("QSOCK_REGENERATE_HEADER").is_some() {
        std::fs::write(&header, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read(&header).unwrap_or_default();
    assert!(
        checked_in == generated,
        "include/qsock.h is stale: the C API in src/ffi changed. Run scripts/regen-header and commit the header."
    );
}
