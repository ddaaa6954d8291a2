//! `tbgw converter new`: a converter project from the templates built into
//! the binary ([`tbgw::templates`]), and the next steps.

use super::{OK, fail};
use std::path::PathBuf;
use std::process::ExitCode;
use tbgw::templates::{self, Lang};
use tbgw_core::Direction;

/// `--lang`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LangArg {
    Rust,
    Python,
    #[value(alias = "javascript")]
    Js,
}

impl From<LangArg> for Lang {
    fn from(l: LangArg) -> Lang {
        match l {
            LangArg::Rust => Lang::Rust,
            LangArg::Python => Lang::Python,
            LangArg::Js => Lang::Js,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The converter's name: the project's directory and the component's
    /// file (`NAME.wasm`). Lowercase letters, digits, `-` and `_`.
    pub name: String,
    /// The language to write it in.
    #[arg(long, value_enum)]
    pub lang: LangArg,
    /// A downlink converter (ThingsBoard's RPCs and attribute updates to
    /// device messages) instead of an uplink one.
    #[arg(long)]
    pub downlink: bool,
    /// Where to create the project's directory [default: the current one].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn run(args: Args) -> ExitCode {
    let direction = if args.downlink { Direction::Downlink } else { Direction::Uplink };
    let lang = Lang::from(args.lang);
    let parent = args.dir.unwrap_or_else(|| PathBuf::from("."));
    if let Err(e) = templates::create(&parent, &args.name, lang, direction) {
        return fail(&e);
    }
    let project = parent.join(&args.name);
    let shown = project.display();
    let language = match lang {
        Lang::Rust => "Rust",
        Lang::Python => "Python",
        Lang::Js => "JavaScript",
    };
    let article = if direction == Direction::Uplink { "an" } else { "a" };
    println!("created {shown}: {article} {direction} converter in {language}");
    println!();
    let steps = [
        (format!("cd {shown}"), String::new()),
        (format!("$EDITOR {}", lang.logic()), "your logic".to_owned()),
        (lang.unit_tests().to_owned(), "its unit tests, without WebAssembly".to_owned()),
        ("./build.sh".to_owned(), format!("{}.wasm", args.name)),
        ("./test.sh".to_owned(), "tbgw converter test on input.jsonl, against expected.jsonl".to_owned()),
    ];
    let width = steps.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    for (command, what) in steps {
        if what.is_empty() {
            println!("  {command}");
        } else {
            println!("  {command:<width$}  # {what}");
        }
    }
    println!();
    println!("Its README.md, and docs/converters.md in tbgw's repository, say how to use it in the gateway.");
    ExitCode::from(OK)
}
