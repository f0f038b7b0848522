//! Every example in `pipelines/` parses and validates.

#[test]
fn example_pipelines_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().map(|x| x == "yaml").unwrap_or(false) {
            // Variables are supplied here, not through the (shared) process environment.
            let text = std::fs::read_to_string(&p).unwrap();
            let cfg = sluice_core::config::parse_pipeline_text_with(&text, &p.display().to_string(), |k| {
                matches!(k, "PGPASSWORD" | "MYSQL_PASSWORD" | "MASK_SALT").then(|| "example".to_string())
            })
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let errors = sluice_transforms::validate(&cfg);
            assert!(errors.is_empty(), "{}: {errors:?}", p.display());
            n += 1;
        }
    }
    assert!(n >= 3, "expected example pipelines in {}", dir.display());
}
