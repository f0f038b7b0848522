//! Validation of the pipeline as a whole: pure, every problem at once. Each
//! component's own checks live next to its types and are called from here.

use super::*;

impl PipelineConfig {
    /// Pure validation: every problem, at once.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        if self.version != 1 {
            errs.push(format!("version: unsupported version {} (this Sluice reads version 1)", self.version));
        }
        if self.name.is_empty() || self.name.len() > 50 {
            errs.push("name: must be 1 to 50 characters".into());
        } else if !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            errs.push(format!("name: {:?} may only contain letters, digits, '_' and '-'", self.name));
        }
        self.source.validate(&mut errs);
        if self.tables.include.is_empty() {
            errs.push("tables.include: list at least one table glob (e.g. \"public.*\")".into());
        }
        for (key, globs) in [("include", &self.tables.include), ("exclude", &self.tables.exclude)] {
            for g in globs.iter() {
                if !g.contains('.') {
                    errs.push(format!("tables.{key}: {g:?} must be schema.table (globs allowed, e.g. \"public.*\")"));
                }
            }
        }
        if self.snapshot.parallelism == 0 || self.snapshot.parallelism > 64 {
            errs.push(format!("snapshot.parallelism: {} must be between 1 and 64", self.snapshot.parallelism));
        }
        self.sink.validate(&mut errs);
        for (i, t) in self.transforms.iter().enumerate() {
            t.validate(i, &mut errs);
        }
        errs
    }
}

/// Hide the password in a connection URL for messages.
pub fn redact_url(url: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        if let Some(at) = rest.find('@') {
            let creds = &rest[..at];
            if let Some(colon) = creds.find(':') {
                return format!("{}://{}:***{}", &url[..scheme_end], &creds[..colon], &rest[at..]);
            }
        }
    }
    url.to_string()
}
