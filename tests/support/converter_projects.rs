//! Converter projects in Rust, Python and JavaScript, as users make them:
//! `tbgw converter new`, then the project's own `build.sh` and `test.sh`.
//!
//! The tools the build scripts fetch (componentize-py from PyPI; jco and
//! componentize-js from npm; crates from crates.io) are installed once per
//! version into `<tmp>/converter-tools/` and shared by every project of a
//! run, as a user's pip and npm caches would be: the build scripts are the
//! projects' own, only pointed at the installed tools (`COMPONENTIZE_PY`, a
//! linked `node_modules`, one `CARGO_TARGET_DIR`). `.ci/run` installs
//! python3-venv and npm; without them a build fails and says which tool is
//! missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// A project's language, as its files say: Cargo.toml, requirements.txt
/// or package.json.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lang {
    Rust,
    Python,
    Js,
}

fn lang_of(project: &Path) -> Lang {
    if project.join("Cargo.toml").exists() {
        Lang::Rust
    } else if project.join("requirements.txt").exists() {
        Lang::Python
    } else if project.join("package.json").exists() {
        Lang::Js
    } else {
        panic!("{}: not a converter project (no Cargo.toml, requirements.txt or package.json)", project.display())
    }
}

/// Builds take both cores: one at a time, and one tool install at a time.
static BUILDS: Mutex<()> = Mutex::new(());

/// Run `command`, panicking with its output when it fails.
pub fn run(command: &mut Command, what: &str) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: cannot start {command:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed ({}):\n{text}", out.status);
    text
}

/// A new project `name` in `parent`, made by the `tbgw` binary's
/// `converter new --lang lang`.
pub fn new_project(tbgw: &Path, parent: &Path, name: &str, lang: &str, downlink: bool) -> PathBuf {
    let mut command = Command::new(tbgw);
    command.args(["converter", "new", name, "--lang", lang, "--dir"]).arg(parent);
    if downlink {
        command.arg("--downlink");
    }
    run(&mut command, &format!("tbgw converter new {name} --lang {lang}"));
    parent.join(name)
}

/// Build `project` with its `build.sh`; the component's path.
pub fn build(tools: &Path, project: &Path) -> PathBuf {
    let _one = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let mut command = Command::new("bash");
    command.arg(project.join("build.sh")).current_dir(project);
    match lang_of(project) {
        Lang::Rust => {
            command.env("CARGO_TARGET_DIR", tools.join("rust-target"));
        }
        Lang::Python => {
            command.env("COMPONENTIZE_PY", python_tools(tools, project).join(".venv/bin/componentize-py"));
        }
        Lang::Js => {
            let modules = js_tools(tools, project).join("node_modules");
            let link = project.join("node_modules");
            if !link.exists() {
                std::os::unix::fs::symlink(&modules, &link).expect("link node_modules");
            }
        }
    }
    run(&mut command, &format!("{}/build.sh", project.display()));
    let name = project.file_name().and_then(|n| n.to_str()).expect("a project name");
    let wasm = project.join(format!("{name}.wasm"));
    assert!(wasm.is_file(), "build.sh made no {}", wasm.display());
    wasm
}

/// The project's unit tests, on the language's own runtime (no wasm).
pub fn unit_tests(tools: &Path, project: &Path) -> String {
    let _one = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let mut command = match lang_of(project) {
        Lang::Rust => {
            let mut c = Command::new("cargo");
            c.arg("test").env("CARGO_TARGET_DIR", tools.join("rust-native-target"));
            c
        }
        Lang::Python => {
            let mut c = Command::new("python3");
            c.args(["-m", "unittest", "-v"]);
            c
        }
        Lang::Js => {
            let mut c = Command::new("node");
            c.arg("--test");
            c
        }
    };
    command.current_dir(project);
    run(&mut command, &format!("the unit tests of {}", project.display()))
}

/// componentize-py at the version the project's requirements.txt pins.
fn python_tools(tools: &Path, project: &Path) -> PathBuf {
    let requirements = std::fs::read(project.join("requirements.txt")).expect("requirements.txt");
    let dir = tools.join(format!("python-{:016x}", fnv(&requirements)));
    if !dir.join("ready").exists() {
        std::fs::create_dir_all(&dir).expect("tools dir");
        std::fs::write(dir.join("requirements.txt"), &requirements).expect("write requirements.txt");
        run(Command::new("python3").args(["-m", "venv", ".venv"]).current_dir(&dir), "python3 -m venv (python3-venv)");
        run(
            Command::new(dir.join(".venv/bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check", "-r", "requirements.txt"])
                .current_dir(&dir),
            "pip install componentize-py",
        );
        std::fs::write(dir.join("ready"), b"").expect("stamp");
    }
    dir
}

/// jco and componentize-js at the versions the project's package.json pins.
fn js_tools(tools: &Path, project: &Path) -> PathBuf {
    let package: serde_json::Value =
        serde_json::from_slice(&std::fs::read(project.join("package.json")).expect("package.json"))
            .expect("package.json is JSON");
    // Only what decides the tools: the project's name and scripts do not.
    let pins = serde_json::json!({"devDependencies": package["devDependencies"], "overrides": package["overrides"]});
    let dir = tools.join(format!("js-{:016x}", fnv(pins.to_string().as_bytes())));
    if !dir.join("ready").exists() {
        std::fs::create_dir_all(&dir).expect("tools dir");
        let mut manifest = pins;
        manifest["name"] = "tbgw-converter-tools".into();
        manifest["private"] = true.into();
        std::fs::write(dir.join("package.json"), manifest.to_string()).expect("write package.json");
        run(
            Command::new("npm").args(["install", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(&dir),
            "npm install jco componentize-js",
        );
        std::fs::write(dir.join("ready"), b"").expect("stamp");
    }
    dir
}

/// FNV-1a: names a tools directory after what it was installed from.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// The sensor example (`guest-converters/examples/sensor`) in the language
/// whose directory there is `lang`, built once per process: the project
/// `new(parent, name)` makes (`tbgw converter new`), with the example's
/// logic (`logic`, its path in the project), config, input and expected
/// output in place of the template's. Its directory and component.
pub fn sensor_example(
    tools: &Path,
    lang: &str,
    logic: &str,
    new: impl FnOnce(&Path, &str) -> PathBuf,
) -> (PathBuf, PathBuf) {
    static BUILT: Mutex<Vec<(String, PathBuf, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, dir, wasm)) = built.iter().find(|(l, _, _)| l == lang) {
        return (dir.clone(), wasm.clone());
    }
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest-converters/examples/sensor");
    let parent = tools.join("examples");
    let name = format!("sensor-{lang}");
    let _ = std::fs::remove_dir_all(parent.join(&name));
    std::fs::create_dir_all(&parent).expect("examples dir");
    let project = new(&parent, &name);
    std::fs::copy(example.join(lang).join(logic), project.join(logic)).expect("the example's logic");
    for file in ["config.json", "input.jsonl", "expected.jsonl", "expected-failures.txt"] {
        std::fs::copy(example.join(file), project.join(file)).expect("the example's cases");
    }
    let wasm = build(tools, &project);
    built.push((lang.to_owned(), project.clone(), wasm.clone()));
    (project, wasm)
}
