//! Every example in `pipelines/` parses and validates.

#[test]
fn example_pipelines_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    std::env::set_var("PGPASSWORD", "example");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().map(|x| x == "yaml").unwrap_or(false) {
            sluice_core::config::load_pipeline(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 3, "expected example pipelines in {}", dir.display());
}
