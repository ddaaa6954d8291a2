//! The converter project templates (`guest-converters/templates/`,
//! embedded by build.rs) and the projects `tbgw converter new` makes of
//! them: the contract's WIT at the version this tbgw implements, the
//! language's helper and glue (Rust: the guest SDK, vendored with its lock
//! file), the user's logic, a build script with pinned tools, a sample
//! config, input and expected output, and `test.sh`, which runs the built
//! component in `tbgw converter test`. A fresh project builds and passes its
//! test unchanged (`tests/converter_languages.rs` checks that for every
//! language and direction).

use std::path::Path;
use tbgw_core::Direction;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/templates.rs"));
}

/// The languages a project can be written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

impl Lang {
    pub const ALL: [Lang; 3] = [Lang::Rust, Lang::Python, Lang::Js];

    /// As `--lang` names it, and the templates' directory.
    pub fn dir(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        }
    }

    /// The file the user edits.
    pub fn logic(self) -> &'static str {
        match self {
            Lang::Rust => "src/lib.rs",
            Lang::Python => "converter.py",
            Lang::Js => "converter.js",
        }
    }

    /// The command that runs the project's unit tests.
    pub fn unit_tests(self) -> &'static str {
        match self {
            Lang::Rust => "cargo test",
            Lang::Python => "python3 -m unittest",
            Lang::Js => "node --test",
        }
    }
}

/// Write the project `parent/name`: a `direction` converter in `lang`. A
/// directory that exists and is not empty is refused.
pub fn create(parent: &Path, name: &str, lang: Lang, direction: Direction) -> Result<(), String> {
    check_name(name).map_err(|e| format!("NAME `{name}`: {e}"))?;
    let project = parent.join(name);
    if project.exists() && std::fs::read_dir(&project).map_or(true, |mut d| d.next().is_some()) {
        return Err(format!("{}: already exists and is not empty", project.display()));
    }
    write(&project, &project_files(name, lang, direction))
}

fn check_name(name: &str) -> Result<(), &'static str> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err("is empty"),
        Some(c) if !c.is_ascii_lowercase() => return Err("must start with a lowercase letter"),
        _ => {}
    }
    if name.len() > 64 {
        return Err("is longer than 64 characters");
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_') {
        return Err("may hold only lowercase letters, digits, `-` and `_`");
    }
    Ok(())
}

/// The project's files: (path in the project, contents, executable).
fn project_files(name: &str, lang: Lang, direction: Direction) -> Vec<(String, Vec<u8>, bool)> {
    let dir = direction.to_string();
    let test_args = match direction {
        Direction::Uplink => "--source sensors/SN-001/data",
        Direction::Downlink => "--downlink",
    };
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{world}}", direction.world())
            .replace("{{direction}}", &dir)
            .replace("{{test_args}}", test_args)
            .replace("{{tbgw_version}}", env!("CARGO_PKG_VERSION"))
            .replace("{{wit_bindgen}}", embedded::WIT_BINDGEN)
    };
    let mut files = Vec::new();
    for (path, contents, template) in embedded::FILES {
        let Some(rest) = path.strip_prefix("common/").or_else(|| path.strip_prefix(&format!("{}/", lang.dir()))) else {
            continue;
        };
        let rest = match rest.split_once('/') {
            Some((d, inner)) if d == dir.as_str() => inner,
            Some(("uplink" | "downlink", _)) => continue,
            _ => rest,
        };
        let contents = match (template, std::str::from_utf8(contents)) {
            (true, Ok(text)) => fill(text).into_bytes(),
            _ => vendored(rest, contents),
        };
        files.push((rest.to_owned(), contents, rest.ends_with(".sh")));
    }
    files
}

/// A vendored crate's manifest names the tbgw workspace it came from; in the
/// project, the project's own workspace is the one (it lists `vendor/*`).
fn vendored(path: &str, contents: &[u8]) -> Vec<u8> {
    match (path.starts_with("vendor/") && path.ends_with("/Cargo.toml"), std::str::from_utf8(contents)) {
        (true, Ok(text)) => text
            .lines()
            .filter(|l| !l.starts_with("workspace = "))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .into_bytes(),
        _ => contents.to_vec(),
    }
}

fn write(project: &Path, files: &[(String, Vec<u8>, bool)]) -> Result<(), String> {
    for (path, contents, executable) in files {
        let target = project.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&target, contents).map_err(|e| format!("{}: {e}", target.display()))?;
        if *executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("{}: {e}", target.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_project_is_whole_and_filled_in() {
        for lang in Lang::ALL {
            for direction in [Direction::Uplink, Direction::Downlink] {
                let files = project_files("my-sensor", lang, direction);
                let paths: Vec<&str> = files.iter().map(|(p, _, _)| p.as_str()).collect();
                for required in ["wit/converter.wit", "build.sh", "test.sh", "README.md", "config.json", "input.jsonl"]
                {
                    assert!(paths.contains(&required), "{lang:?} {direction}: no {required} in {paths:?}");
                }
                assert!(paths.contains(&"expected.jsonl") && paths.contains(&"expected-failures.txt"));
                assert!(paths.contains(&lang.logic()), "{lang:?} {direction}: {paths:?}");
                for (path, contents, _) in &files {
                    if path.starts_with("vendor/") || path.ends_with(".lock") {
                        continue;
                    }
                    let text = String::from_utf8_lossy(contents);
                    assert!(!text.contains("{{"), "{lang:?} {direction}: {path} keeps a placeholder");
                }
                assert!(
                    !paths.iter().any(|p| p.starts_with("uplink/") || p.starts_with("downlink/")),
                    "{lang:?} {direction}: one direction's files, in place: {paths:?}"
                );
            }
        }
        let rust = project_files("my-sensor", Lang::Rust, Direction::Uplink);
        let alloc =
            rust.iter().find(|(p, _, _)| p == "vendor/tbgw-guest-alloc/Cargo.toml").expect("the vendored alloc");
        assert!(!String::from_utf8_lossy(&alloc.1).contains("workspace = \""), "the tbgw workspace is not named");
    }

    #[test]
    fn names() {
        assert!(check_name("my-sensor_2").is_ok());
        for bad in ["", "My", "2x", "a b", "a/b", "ä"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
