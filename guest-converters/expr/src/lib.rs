//! A small expression language for the values of CAN frames and BLE
//! characteristics: the Python gateway's `expression`, `dataExpression` and
//! `compute` (`bool(value & 0b100)`, `value / 4`, `can_data[2] << 8 |
//! can_data[3]`, `a if a < b else b`) evaluated with Python's results, and
//! nothing else.
//!
//! The Python gateway hands these strings to Python's `eval`. With
//! `strictEval: false` (its own sample's setting) they run with the module's
//! globals; even its strict mode is no sandbox (a subclass walk from `()`
//! reaches `os.system`). Here an expression is parsed once, when the
//! converter is configured, into a tree of the operations below; anything
//! outside them (attribute access, `__import__`, lambdas, a name that is not
//! a known function or variable) is refused then, with the character where
//! it is. Evaluation cannot loop, allocate without bound or reach outside
//! the values it is given.
//!
//! What it has, with Python's semantics:
//! - literals: integers (`42`, `0x2A`, `0o52`, `0b101010`, `1_000`),
//!   floats (`2.5`, `.5`, `1e3`), strings (`'a'`, `"a"`, with `\n \t \\ \'
//!   \" \xNN` escapes), `True`, `False`, `None`;
//! - arithmetic `+ - * / // % **` (`/` always a float; `//` and `%` floor,
//!   the remainder taking the divisor's sign), bitwise `& | ^ ~ << >>`,
//!   comparisons `< <= > >= == !=` (chained: `0 < x < 10`), `and`, `or`,
//!   `not` (returning an operand, as Python's do), `a if cond else b`;
//! - indexing and slicing of byte strings and strings (`can_data[0]`,
//!   `can_data[-1]`, `can_data[2:4]`, `can_data[::2]`);
//! - the functions [`FUNCTIONS`]: `int`, `float`, `bool`, `round`, `abs`,
//!   `min`, `max`, `hex`, `len`.
//!
//! Integers are 64-bit: a result beyond that is an error (Python's would
//! grow), as is every error Python would raise (division by zero, an index
//! out of range), with Python's wording where it has one.

pub mod data;

use std::cmp::Ordering;
use std::fmt;

/// The functions an expression may call.
pub const FUNCTIONS: &[&str] = &["int", "float", "bool", "round", "abs", "min", "max", "hex", "len"];

/// Python keywords that are not part of the language: named in the error.
const REFUSED_KEYWORDS: &[&str] = &[
    "lambda", "import", "from", "for", "while", "in", "is", "def", "class", "return", "yield", "await", "async", "del",
    "global", "nonlocal", "with", "as", "try", "except", "raise", "assert", "pass", "break", "continue", "elif",
    "finally",
];

/// How deeply an expression may nest (parentheses, operators): enough for
/// any real one, and a bound on the parser's recursion.
const MAX_DEPTH: usize = 64;

/// A value, as Python would have it.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// A byte string (`can_data`, a slice of it): Python's `bytearray`.
    Bytes(Vec<u8>),
}

impl Val {
    /// Python's name of its type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Val::None => "NoneType",
            Val::Bool(_) => "bool",
            Val::Int(_) => "int",
            Val::Float(_) => "float",
            Val::Str(_) => "str",
            Val::Bytes(_) => "bytearray",
        }
    }

    /// Python's truth value.
    pub fn truthy(&self) -> bool {
        match self {
            Val::None => false,
            Val::Bool(b) => *b,
            Val::Int(i) => *i != 0,
            Val::Float(x) => *x != 0.0,
            Val::Str(s) => !s.is_empty(),
            Val::Bytes(b) => !b.is_empty(),
        }
    }
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::None => f.write_str("None"),
            Val::Bool(true) => f.write_str("True"),
            Val::Bool(false) => f.write_str("False"),
            Val::Int(i) => write!(f, "{i}"),
            Val::Float(x) => write!(f, "{x:?}"),
            Val::Str(s) => write!(f, "{s:?}"),
            Val::Bytes(b) => write!(f, "bytearray({b:?})"),
        }
    }
}

/// Why an expression does not parse, and where (a character offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub at: usize,
    pub message: String,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at character {})", self.message, self.at + 1)
    }
}

impl std::error::Error for SyntaxError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Mod,
    Pow,
    And,
    Or,
    Xor,
    Shl,
    Shr,
}

impl BinOp {
    fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::FloorDiv => "//",
            BinOp::Mod => "%",
            BinOp::Pow => "**",
            BinOp::And => "&",
            BinOp::Or => "|",
            BinOp::Xor => "^",
            BinOp::Shl => "<<",
            BinOp::Shr => ">>",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnOp {
    Neg,
    Pos,
    Invert,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Const(Val),
    Name(String),
    Unary(UnOp, Box<Node>),
    Binary(BinOp, Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Compare(Box<Node>, Vec<(CmpOp, Node)>),
    IfElse(Box<Node>, Box<Node>, Box<Node>),
    Index(Box<Node>, Box<Node>),
    Slice(Box<Node>, [Option<Box<Node>>; 3]),
    Call(&'static str, Vec<Node>),
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    root: Node,
    names: Vec<String>,
}

impl Expr {
    /// Parse `source`; anything outside the language is an error naming
    /// where it is.
    pub fn parse(source: &str) -> Result<Expr, SyntaxError> {
        let tokens = tokenize(source)?;
        let mut p = Parser { tokens, pos: 0, depth: 0, names: Vec::new() };
        let root = p.test()?;
        match p.peek() {
            Tok::End => {}
            t => return Err(p.error(format!("unexpected {}", t.describe()))),
        }
        Ok(Expr { root, names: p.names })
    }

    /// The variables it reads, each once, in order of appearance: a
    /// converter checks them against what it will provide.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Evaluate with `vars` giving each variable's value (`None`: not
    /// defined, an error naming it).
    pub fn eval(&self, vars: &dyn Fn(&str) -> Option<Val>) -> Result<Val, String> {
        eval(&self.root, vars)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Int(i64),
    Float(f64),
    Str(String),
    Name(String),
    Op(&'static str),
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Int(i) => format!("number {i}"),
            Tok::Float(x) => format!("number {x}"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Name(n) => format!("`{n}`"),
            Tok::Op(o) => format!("`{o}`"),
            Tok::End => "end of expression".to_owned(),
        }
    }
}

/// Operators, longest first so that `**` is not read as two `*`.
const OPS: &[&str] = &[
    "**", "//", "<<", ">>", "<=", ">=", "==", "!=", "+", "-", "*", "/", "%", "&", "|", "^", "~", "<", ">", "(", ")",
    "[", "]", ",", ":",
];

fn tokenize(source: &str) -> Result<Vec<(Tok, usize)>, SyntaxError> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |at: usize, message: String| SyntaxError { at, message };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let (tok, end) = number(&chars, i).map_err(|m| err(start, m))?;
            out.push((tok, start));
            i = end;
            if chars.get(i).is_some_and(|c| c.is_alphanumeric() || *c == '_') {
                return Err(err(i, "a number runs into a name".to_owned()));
            }
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            if matches!(chars.get(i), Some('\'' | '"')) {
                return Err(err(start, format!("string prefixes (`{name}'...'`) are not supported")));
            }
            out.push((Tok::Name(name), start));
            continue;
        }
        if c == '\'' || c == '"' {
            let (s, end) = string(&chars, i).map_err(|m| err(start, m))?;
            out.push((Tok::Str(s), start));
            i = end;
            continue;
        }
        if c == '.' {
            return Err(err(i, "attribute access (`.`) is not allowed".to_owned()));
        }
        let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
        match OPS.iter().find(|op| rest.starts_with(**op)) {
            Some(op) => {
                out.push((Tok::Op(op), start));
                i += op.chars().count();
            }
            None => {
                let what = match c {
                    '=' => "assignment (`=`) is not allowed; compare with `==`".to_owned(),
                    '{' | '}' => "dictionaries and sets are not supported".to_owned(),
                    '@' => "`@` is not supported".to_owned(),
                    other => format!("unexpected character `{other}`"),
                };
                return Err(err(i, what));
            }
        }
    }
    out.push((Tok::End, chars.len()));
    Ok(out)
}

fn number(chars: &[char], start: usize) -> Result<(Tok, usize), String> {
    let mut i = start;
    let radix = match (chars[i], chars.get(i + 1).map(char::to_ascii_lowercase)) {
        ('0', Some('x')) => 16,
        ('0', Some('o')) => 8,
        ('0', Some('b')) => 2,
        _ => 10,
    };
    if radix != 10 {
        i += 2;
        let digits_start = i;
        while i < chars.len() && (chars[i].is_digit(radix) || chars[i] == '_') {
            i += 1;
        }
        let digits: String = chars[digits_start..i].iter().filter(|c| **c != '_').collect();
        if digits.is_empty() {
            return Err("a number prefix without digits".to_owned());
        }
        let v = i64::from_str_radix(&digits, radix).map_err(|_| "an integer beyond 64 bits".to_owned())?;
        return Ok((Tok::Int(v), i));
    }
    let mut float = false;
    while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '_') {
        i += 1;
    }
    if chars.get(i) == Some(&'.') {
        float = true;
        i += 1;
        while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '_') {
            i += 1;
        }
    }
    if matches!(chars.get(i), Some('e' | 'E')) {
        let mut j = i + 1;
        if matches!(chars.get(j), Some('+' | '-')) {
            j += 1;
        }
        if chars.get(j).is_some_and(char::is_ascii_digit) {
            float = true;
            i = j;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    let text: String = chars[start..i].iter().filter(|c| **c != '_').collect();
    if float {
        let v: f64 = text.parse().map_err(|_| format!("`{text}` is not a number"))?;
        Ok((Tok::Float(v), i))
    } else {
        let v: i64 = text.parse().map_err(|_| "an integer beyond 64 bits".to_owned())?;
        Ok((Tok::Int(v), i))
    }
}

fn string(chars: &[char], start: usize) -> Result<(String, usize), String> {
    let quote = chars[start];
    let mut out = String::new();
    let mut i = start + 1;
    loop {
        let Some(&c) = chars.get(i) else { return Err("a string without its closing quote".to_owned()) };
        i += 1;
        if c == quote {
            return Ok((out, i));
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(&e) = chars.get(i) else { return Err("a string without its closing quote".to_owned()) };
        i += 1;
        match e {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            'r' => out.push('\r'),
            '0' => out.push('\0'),
            '\\' | '\'' | '"' => out.push(e),
            'x' => {
                let hex: String = chars.get(i..i + 2).map(|h| h.iter().collect()).unwrap_or_default();
                let v = u8::from_str_radix(&hex, 16).map_err(|_| "`\\x` takes two hex digits".to_owned())?;
                out.push(char::from(v));
                i += 2;
            }
            other => {
                out.push('\\');
                out.push(other);
            }
        }
    }
}

struct Parser {
    tokens: Vec<(Tok, usize)>,
    pos: usize,
    depth: usize,
    names: Vec<String>,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.pos.min(self.tokens.len() - 1)].0
    }

    fn at(&self) -> usize {
        self.tokens[self.pos.min(self.tokens.len() - 1)].1
    }

    fn error(&self, message: String) -> SyntaxError {
        SyntaxError { at: self.at(), message }
    }

    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn eat_op(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Tok::Op(o) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_word(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Tok::Name(n) if n == word) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_op(&mut self, op: &str) -> Result<(), SyntaxError> {
        if self.eat_op(op) {
            Ok(())
        } else {
            Err(self.error(format!("expected `{op}`, found {}", self.peek().describe())))
        }
    }

    /// `a if cond else b`, the lowest precedence.
    fn test(&mut self) -> Result<Node, SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error(format!("nested more than {MAX_DEPTH} deep")));
        }
        let then = self.or_test()?;
        let node = if self.eat_word("if") {
            let cond = self.or_test()?;
            if !self.eat_word("else") {
                return Err(self.error(format!("expected `else`, found {}", self.peek().describe())));
            }
            let other = self.test()?;
            Node::IfElse(Box::new(cond), Box::new(then), Box::new(other))
        } else {
            then
        };
        self.depth -= 1;
        Ok(node)
    }

    fn or_test(&mut self) -> Result<Node, SyntaxError> {
        let mut left = self.and_test()?;
        while self.eat_word("or") {
            left = Node::Or(Box::new(left), Box::new(self.and_test()?));
        }
        Ok(left)
    }

    fn and_test(&mut self) -> Result<Node, SyntaxError> {
        let mut left = self.not_test()?;
        while self.eat_word("and") {
            left = Node::And(Box::new(left), Box::new(self.not_test()?));
        }
        Ok(left)
    }

    fn not_test(&mut self) -> Result<Node, SyntaxError> {
        if self.eat_word("not") {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(self.error(format!("nested more than {MAX_DEPTH} deep")));
            }
            let inner = self.not_test()?;
            self.depth -= 1;
            return Ok(Node::Not(Box::new(inner)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Node, SyntaxError> {
        let first = self.binary(0)?;
        let mut rest = Vec::new();
        loop {
            let op = match self.peek() {
                Tok::Op("<") => CmpOp::Lt,
                Tok::Op("<=") => CmpOp::Le,
                Tok::Op(">") => CmpOp::Gt,
                Tok::Op(">=") => CmpOp::Ge,
                Tok::Op("==") => CmpOp::Eq,
                Tok::Op("!=") => CmpOp::Ne,
                _ => break,
            };
            self.pos += 1;
            rest.push((op, self.binary(0)?));
        }
        Ok(if rest.is_empty() { first } else { Node::Compare(Box::new(first), rest) })
    }

    /// The binary operators from `|` to `* / // %`, by precedence level.
    fn binary(&mut self, level: usize) -> Result<Node, SyntaxError> {
        const LEVELS: &[&[(&str, BinOp)]] = &[
            &[("|", BinOp::Or)],
            &[("^", BinOp::Xor)],
            &[("&", BinOp::And)],
            &[("<<", BinOp::Shl), (">>", BinOp::Shr)],
            &[("+", BinOp::Add), ("-", BinOp::Sub)],
            &[("*", BinOp::Mul), ("/", BinOp::Div), ("//", BinOp::FloorDiv), ("%", BinOp::Mod)],
        ];
        if level == LEVELS.len() {
            return self.factor();
        }
        let mut left = self.binary(level + 1)?;
        loop {
            let op = match self.peek() {
                Tok::Op(o) => LEVELS[level].iter().find(|(s, _)| s == o).map(|(_, op)| *op),
                _ => None,
            };
            let Some(op) = op else { break };
            self.pos += 1;
            left = Node::Binary(op, Box::new(left), Box::new(self.binary(level + 1)?));
        }
        Ok(left)
    }

    fn factor(&mut self) -> Result<Node, SyntaxError> {
        let op = match self.peek() {
            Tok::Op("-") => Some(UnOp::Neg),
            Tok::Op("+") => Some(UnOp::Pos),
            Tok::Op("~") => Some(UnOp::Invert),
            _ => None,
        };
        if let Some(op) = op {
            self.pos += 1;
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(self.error(format!("nested more than {MAX_DEPTH} deep")));
            }
            let inner = self.factor()?;
            self.depth -= 1;
            return Ok(Node::Unary(op, Box::new(inner)));
        }
        let base = self.primary()?;
        if self.eat_op("**") {
            // Right-associative, and binds tighter than a unary minus on
            // its left (`-2 ** 2` is -4) but not on its right.
            let exponent = self.factor()?;
            return Ok(Node::Binary(BinOp::Pow, Box::new(base), Box::new(exponent)));
        }
        Ok(base)
    }

    fn primary(&mut self) -> Result<Node, SyntaxError> {
        let mut node = self.atom()?;
        while self.eat_op("[") {
            node = self.subscript(node)?;
        }
        if matches!(self.peek(), Tok::Op("(")) {
            return Err(self.error("only the functions may be called: ".to_owned() + &FUNCTIONS.join(", ")));
        }
        Ok(node)
    }

    fn subscript(&mut self, target: Node) -> Result<Node, SyntaxError> {
        let mut parts: [Option<Box<Node>>; 3] = [None, None, None];
        let mut colons = 0;
        loop {
            match self.peek() {
                Tok::Op("]") => break,
                Tok::Op(":") if colons < 2 => {
                    self.pos += 1;
                    colons += 1;
                }
                _ if parts[colons].is_none() => parts[colons] = Some(Box::new(self.test()?)),
                t => return Err(self.error(format!("expected `]`, found {}", t.describe()))),
            }
        }
        self.expect_op("]")?;
        if colons == 0 {
            let Some(index) = parts[0].take() else { return Err(self.error("an empty index `[]`".to_owned())) };
            return Ok(Node::Index(Box::new(target), index));
        }
        Ok(Node::Slice(Box::new(target), parts))
    }

    fn atom(&mut self) -> Result<Node, SyntaxError> {
        let at = self.at();
        match self.next() {
            Tok::Int(i) => Ok(Node::Const(Val::Int(i))),
            Tok::Float(x) => Ok(Node::Const(Val::Float(x))),
            Tok::Str(s) => Ok(Node::Const(Val::Str(s))),
            Tok::Op("(") => {
                let inner = self.test()?;
                if matches!(self.peek(), Tok::Op(",")) {
                    return Err(self.error("tuples are not supported".to_owned()));
                }
                self.expect_op(")")?;
                Ok(inner)
            }
            Tok::Op("[") => Err(SyntaxError { at, message: "lists are not supported".to_owned() }),
            Tok::Name(n) => match n.as_str() {
                "True" => Ok(Node::Const(Val::Bool(true))),
                "False" => Ok(Node::Const(Val::Bool(false))),
                "None" => Ok(Node::Const(Val::None)),
                "and" | "or" | "not" | "if" | "else" => {
                    Err(SyntaxError { at, message: format!("`{n}` needs a value before it") })
                }
                kw if REFUSED_KEYWORDS.contains(&kw) => {
                    Err(SyntaxError { at, message: format!("`{kw}` is not part of the expression language") })
                }
                _ => self.name(n, at),
            },
            t => Err(SyntaxError { at, message: format!("unexpected {}", t.describe()) }),
        }
    }

    fn name(&mut self, n: String, at: usize) -> Result<Node, SyntaxError> {
        if !self.eat_op("(") {
            if n.starts_with("__") {
                return Err(SyntaxError { at, message: format!("`{n}` is not a variable: dunder names are refused") });
            }
            if !self.names.contains(&n) {
                self.names.push(n.clone());
            }
            return Ok(Node::Name(n));
        }
        let Some(func) = FUNCTIONS.iter().find(|f| **f == n) else {
            return Err(SyntaxError {
                at,
                message: format!("`{n}` is not a function here; the functions are {}", FUNCTIONS.join(", ")),
            });
        };
        let mut args = Vec::new();
        if !self.eat_op(")") {
            loop {
                args.push(self.test()?);
                if self.eat_op(")") {
                    break;
                }
                self.expect_op(",")?;
                if self.eat_op(")") {
                    break;
                }
            }
        }
        let arity = match *func {
            "int" | "round" => 1..=2,
            "min" | "max" => 1..=usize::MAX,
            _ => 1..=1,
        };
        if !arity.contains(&args.len()) {
            return Err(SyntaxError {
                at,
                message: format!("{func}() takes {} argument(s), got {}", arity_text(func), args.len()),
            });
        }
        Ok(Node::Call(func, args))
    }
}

fn arity_text(func: &str) -> &'static str {
    match func {
        "int" | "round" => "1 or 2",
        "min" | "max" => "1 or more",
        _ => "1",
    }
}

fn eval(node: &Node, vars: &dyn Fn(&str) -> Option<Val>) -> Result<Val, String> {
    Ok(match node {
        Node::Const(v) => v.clone(),
        Node::Name(n) => vars(n).ok_or_else(|| format!("name '{n}' is not defined"))?,
        Node::Unary(op, inner) => unary(*op, eval(inner, vars)?)?,
        Node::Binary(op, a, b) => binary(*op, eval(a, vars)?, eval(b, vars)?)?,
        Node::And(a, b) => {
            let a = eval(a, vars)?;
            if a.truthy() { eval(b, vars)? } else { a }
        }
        Node::Or(a, b) => {
            let a = eval(a, vars)?;
            if a.truthy() { a } else { eval(b, vars)? }
        }
        Node::Not(a) => Val::Bool(!eval(a, vars)?.truthy()),
        Node::Compare(first, rest) => {
            let mut left = eval(first, vars)?;
            for (op, right) in rest {
                let right = eval(right, vars)?;
                if !compare(*op, &left, &right)? {
                    return Ok(Val::Bool(false));
                }
                left = right;
            }
            Val::Bool(true)
        }
        Node::IfElse(cond, then, other) => {
            if eval(cond, vars)?.truthy() {
                eval(then, vars)?
            } else {
                eval(other, vars)?
            }
        }
        Node::Index(target, index) => index_of(eval(target, vars)?, eval(index, vars)?)?,
        Node::Slice(target, parts) => {
            let target = eval(target, vars)?;
            let mut bounds = [None, None, None];
            for (b, p) in bounds.iter_mut().zip(parts) {
                if let Some(p) = p {
                    *b = match eval(p, vars)? {
                        Val::None => None,
                        v => Some(as_index(&v)?),
                    };
                }
            }
            slice(target, bounds)?
        }
        Node::Call(func, args) => {
            let args = args.iter().map(|a| eval(a, vars)).collect::<Result<Vec<_>, _>>()?;
            call(func, args)?
        }
    })
}

/// A number operand: bools count as ints, as in Python.
#[derive(Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

fn num(v: &Val) -> Option<Num> {
    match v {
        Val::Bool(b) => Some(Num::Int(i64::from(*b))),
        Val::Int(i) => Some(Num::Int(*i)),
        Val::Float(x) => Some(Num::Float(*x)),
        _ => None,
    }
}

const OVERFLOW: &str = "integer overflow: the result does not fit in 64 bits";

fn unary(op: UnOp, v: Val) -> Result<Val, String> {
    let symbol = match op {
        UnOp::Neg => "-",
        UnOp::Pos => "+",
        UnOp::Invert => "~",
    };
    let bad = || format!("bad operand type for unary {symbol}: '{}'", v.type_name());
    Ok(match (op, num(&v)) {
        (UnOp::Neg, Some(Num::Int(i))) => Val::Int(i.checked_neg().ok_or(OVERFLOW)?),
        (UnOp::Neg, Some(Num::Float(x))) => Val::Float(-x),
        (UnOp::Pos, Some(Num::Int(i))) => Val::Int(i),
        (UnOp::Pos, Some(Num::Float(x))) => Val::Float(x),
        (UnOp::Invert, Some(Num::Int(i))) => Val::Int(!i),
        _ => return Err(bad()),
    })
}

fn binary(op: BinOp, a: Val, b: Val) -> Result<Val, String> {
    let unsupported =
        || format!("unsupported operand type(s) for {}: '{}' and '{}'", op.symbol(), a.type_name(), b.type_name());
    // Sequences: concatenation only.
    match (op, &a, &b) {
        (BinOp::Add, Val::Str(x), Val::Str(y)) => return Ok(Val::Str(format!("{x}{y}"))),
        (BinOp::Add, Val::Bytes(x), Val::Bytes(y)) => return Ok(Val::Bytes([x.as_slice(), y].concat())),
        // bool & bool stays a bool, as in Python.
        (BinOp::And | BinOp::Or | BinOp::Xor, Val::Bool(x), Val::Bool(y)) => {
            return Ok(Val::Bool(match op {
                BinOp::And => x & y,
                BinOp::Or => x | y,
                _ => x ^ y,
            }));
        }
        _ => {}
    }
    let (Some(x), Some(y)) = (num(&a), num(&b)) else { return Err(unsupported()) };
    match (x, y) {
        (Num::Int(x), Num::Int(y)) => int_op(op, x, y),
        _ => {
            if matches!(op, BinOp::And | BinOp::Or | BinOp::Xor | BinOp::Shl | BinOp::Shr) {
                return Err(unsupported());
            }
            let f = |n: Num| match n {
                Num::Int(i) => i as f64,
                Num::Float(x) => x,
            };
            float_op(op, f(x), f(y))
        }
    }
}

fn int_op(op: BinOp, x: i64, y: i64) -> Result<Val, String> {
    let v = match op {
        BinOp::Add => x.checked_add(y).ok_or(OVERFLOW)?,
        BinOp::Sub => x.checked_sub(y).ok_or(OVERFLOW)?,
        BinOp::Mul => x.checked_mul(y).ok_or(OVERFLOW)?,
        BinOp::Div => {
            if y == 0 {
                return Err("division by zero".to_owned());
            }
            return Ok(Val::Float(x as f64 / y as f64));
        }
        BinOp::FloorDiv | BinOp::Mod => {
            if y == 0 {
                return Err("integer division or modulo by zero".to_owned());
            }
            let q = x.checked_div(y).ok_or(OVERFLOW)?;
            let r = x - q * y;
            // Floor, not truncation: the remainder takes the divisor's sign.
            let (q, r) = if r != 0 && ((r < 0) != (y < 0)) { (q - 1, r + y) } else { (q, r) };
            if op == BinOp::FloorDiv { q } else { r }
        }
        BinOp::Pow => {
            if y < 0 {
                if x == 0 {
                    return Err("0.0 cannot be raised to a negative power".to_owned());
                }
                return Ok(Val::Float((x as f64).powf(y as f64)));
            }
            let e = u32::try_from(y).map_err(|_| OVERFLOW)?;
            x.checked_pow(e).ok_or(OVERFLOW)?
        }
        BinOp::And => x & y,
        BinOp::Or => x | y,
        BinOp::Xor => x ^ y,
        BinOp::Shl => {
            if y < 0 {
                return Err("negative shift count".to_owned());
            }
            if x == 0 {
                0
            } else {
                let s = u32::try_from(y).ok().filter(|s| *s < 64).ok_or(OVERFLOW)?;
                let v = x << s;
                if v >> s != x {
                    return Err(OVERFLOW.to_owned());
                }
                v
            }
        }
        BinOp::Shr => {
            if y < 0 {
                return Err("negative shift count".to_owned());
            }
            x >> y.min(63)
        }
    };
    Ok(Val::Int(v))
}

fn float_op(op: BinOp, x: f64, y: f64) -> Result<Val, String> {
    let v = match op {
        BinOp::Add => x + y,
        BinOp::Sub => x - y,
        BinOp::Mul => x * y,
        BinOp::Div => {
            if y == 0.0 {
                return Err("float division by zero".to_owned());
            }
            x / y
        }
        BinOp::FloorDiv | BinOp::Mod => {
            if y == 0.0 {
                return Err(if op == BinOp::Mod { "float modulo" } else { "float floor division by zero" }.to_owned());
            }
            let r = x % y;
            let r = if r != 0.0 && ((r < 0.0) != (y < 0.0)) { r + y } else { r };
            if op == BinOp::Mod { r } else { ((x - r) / y).round() }
        }
        BinOp::Pow => {
            if x == 0.0 && y < 0.0 {
                return Err("0.0 cannot be raised to a negative power".to_owned());
            }
            if x < 0.0 && y.fract() != 0.0 {
                return Err("a negative number to a fractional power has no real value".to_owned());
            }
            x.powf(y)
        }
        BinOp::And | BinOp::Or | BinOp::Xor | BinOp::Shl | BinOp::Shr => {
            return Err(format!("unsupported operand type(s) for {}: 'float'", op.symbol()));
        }
    };
    Ok(Val::Float(v))
}

fn order(a: &Val, b: &Val) -> Option<Ordering> {
    match (num(a), num(b)) {
        (Some(Num::Int(x)), Some(Num::Int(y))) => Some(x.cmp(&y)),
        (Some(x), Some(y)) => {
            let f = |n: Num| match n {
                Num::Int(i) => i as f64,
                Num::Float(x) => x,
            };
            f(x).partial_cmp(&f(y))
        }
        _ => match (a, b) {
            (Val::Str(x), Val::Str(y)) => Some(x.cmp(y)),
            (Val::Bytes(x), Val::Bytes(y)) => Some(x.cmp(y)),
            _ => None,
        },
    }
}

fn compare(op: CmpOp, a: &Val, b: &Val) -> Result<bool, String> {
    let ord = order(a, b);
    Ok(match op {
        CmpOp::Eq => ord == Some(Ordering::Equal) || (*a == Val::None && *b == Val::None),
        CmpOp::Ne => !(ord == Some(Ordering::Equal) || (*a == Val::None && *b == Val::None)),
        _ => {
            let comparable = num(a).is_some() && num(b).is_some()
                || matches!((a, b), (Val::Str(_), Val::Str(_)) | (Val::Bytes(_), Val::Bytes(_)));
            if !comparable {
                let symbol = match op {
                    CmpOp::Lt => "<",
                    CmpOp::Le => "<=",
                    CmpOp::Gt => ">",
                    _ => ">=",
                };
                return Err(format!(
                    "'{symbol}' not supported between instances of '{}' and '{}'",
                    a.type_name(),
                    b.type_name()
                ));
            }
            // NaN compares false to everything.
            let Some(ord) = ord else { return Ok(false) };
            match op {
                CmpOp::Lt => ord.is_lt(),
                CmpOp::Le => ord.is_le(),
                CmpOp::Gt => ord.is_gt(),
                _ => ord.is_ge(),
            }
        }
    })
}

fn as_index(v: &Val) -> Result<i64, String> {
    match v {
        Val::Int(i) => Ok(*i),
        Val::Bool(b) => Ok(i64::from(*b)),
        other => Err(format!("indices must be integers or None, not {}", other.type_name())),
    }
}

fn index_of(target: Val, index: Val) -> Result<Val, String> {
    let i = as_index(&index)?;
    let pick = |len: usize| -> Result<usize, String> {
        let len = i64::try_from(len).map_err(|_| OVERFLOW.to_owned())?;
        let j = if i < 0 { i + len } else { i };
        if (0..len).contains(&j) {
            usize::try_from(j).map_err(|_| OVERFLOW.to_owned())
        } else {
            Err(format!("index {i} out of range (length {len})"))
        }
    };
    match target {
        Val::Bytes(b) => Ok(Val::Int(i64::from(b[pick(b.len())?]))),
        Val::Str(s) => {
            let chars: Vec<char> = s.chars().collect();
            Ok(Val::Str(chars[pick(chars.len())?].to_string()))
        }
        other => Err(format!("'{}' object is not subscriptable", other.type_name())),
    }
}

/// Python's slice indices for a sequence of `len`.
fn slice_indices(len: usize, [start, stop, step]: [Option<i64>; 3]) -> Result<Vec<usize>, String> {
    let len = i64::try_from(len).map_err(|_| OVERFLOW.to_owned())?;
    let step = step.unwrap_or(1);
    if step == 0 {
        return Err("slice step cannot be zero".to_owned());
    }
    let clamp = |v: i64, lo: i64, hi: i64| {
        let v = if v < 0 { v.saturating_add(len) } else { v };
        v.clamp(lo, hi)
    };
    let mut out = Vec::new();
    if step > 0 {
        let start = start.map_or(0, |s| clamp(s, 0, len));
        let stop = stop.map_or(len, |s| clamp(s, 0, len));
        let mut i = start;
        while i < stop {
            out.push(i as usize);
            i = i.saturating_add(step);
        }
    } else {
        let start = start.map_or(len - 1, |s| clamp(s, -1, len - 1));
        let stop = stop.map_or(-1, |s| clamp(s, -1, len - 1));
        let mut i = start;
        while i > stop {
            out.push(i as usize);
            i = i.saturating_add(step);
        }
    }
    Ok(out)
}

fn slice(target: Val, bounds: [Option<i64>; 3]) -> Result<Val, String> {
    match target {
        Val::Bytes(b) => Ok(Val::Bytes(slice_indices(b.len(), bounds)?.into_iter().map(|i| b[i]).collect())),
        Val::Str(s) => {
            let chars: Vec<char> = s.chars().collect();
            Ok(Val::Str(slice_indices(chars.len(), bounds)?.into_iter().map(|i| chars[i]).collect()))
        }
        other => Err(format!("'{}' object is not subscriptable", other.type_name())),
    }
}

fn float_to_int(x: f64) -> Result<i64, String> {
    if x.is_nan() {
        return Err("cannot convert float NaN to integer".to_owned());
    }
    if x.is_infinite() {
        return Err("cannot convert float infinity to integer".to_owned());
    }
    let t = x.trunc();
    // i64::MAX as f64 rounds up to 2^63, which does not fit.
    if !(-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&t) {
        return Err(OVERFLOW.to_owned());
    }
    Ok(t as i64)
}

fn call(func: &str, mut args: Vec<Val>) -> Result<Val, String> {
    let first = args.first().cloned().unwrap_or(Val::None);
    match func {
        "int" => {
            if let Some(base) = args.get(1) {
                let Val::Str(s) = &first else {
                    return Err("int() can't convert non-string with explicit base".to_owned());
                };
                let base = as_index(base)?;
                return parse_int(s, base).map(Val::Int);
            }
            Ok(Val::Int(match &first {
                Val::Bool(b) => i64::from(*b),
                Val::Int(i) => *i,
                Val::Float(x) => float_to_int(*x)?,
                Val::Str(s) => parse_int(s, 10)?,
                other => {
                    return Err(format!(
                        "int() argument must be a string or a real number, not '{}'",
                        other.type_name()
                    ));
                }
            }))
        }
        "float" => Ok(Val::Float(match &first {
            Val::Bool(b) => f64::from(u8::from(*b)),
            Val::Int(i) => *i as f64,
            Val::Float(x) => *x,
            Val::Str(s) => {
                let t = s.trim().replace('_', "");
                match t.to_ascii_lowercase().trim_start_matches(['+', '-']) {
                    "inf" | "infinity" | "nan" => t.to_ascii_lowercase().parse::<f64>().ok(),
                    _ if t.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => t.parse::<f64>().ok(),
                    _ => None,
                }
                .ok_or_else(|| format!("could not convert string to float: '{s}'"))?
            }
            other => {
                return Err(format!("float() argument must be a string or a real number, not '{}'", other.type_name()));
            }
        })),
        "bool" => Ok(Val::Bool(first.truthy())),
        "round" => {
            let digits = match args.get(1) {
                None | Some(Val::None) => None,
                Some(d) => Some(as_index(d)?),
            };
            match (num(&first), digits) {
                (Some(Num::Int(i)), None) => Ok(Val::Int(i)),
                (Some(Num::Int(i)), Some(d)) if d >= 0 => Ok(Val::Int(i)),
                (Some(Num::Int(i)), Some(d)) => {
                    // round(1234, -2) == 1200, halves to even.
                    let p = 10_i64.checked_pow(u32::try_from(-d).unwrap_or(u32::MAX)).ok_or(OVERFLOW);
                    match p {
                        Ok(p) => {
                            let q = (i as f64 / p as f64).round_ties_even() as i64;
                            Ok(Val::Int(q.checked_mul(p).ok_or(OVERFLOW)?))
                        }
                        Err(_) => Ok(Val::Int(0)),
                    }
                }
                (Some(Num::Float(x)), None) => Ok(Val::Int(float_to_int(x.round_ties_even())?)),
                (Some(Num::Float(x)), Some(d)) => Ok(Val::Float(round_float(x, d))),
                _ => Err(format!("type {} doesn't define __round__ method", first.type_name())),
            }
        }
        "abs" => match num(&first) {
            Some(Num::Int(i)) => Ok(Val::Int(i.checked_abs().ok_or(OVERFLOW)?)),
            Some(Num::Float(x)) => Ok(Val::Float(x.abs())),
            None => Err(format!("bad operand type for abs(): '{}'", first.type_name())),
        },
        "min" | "max" => {
            let items: Vec<Val> = if args.len() == 1 {
                match args.remove(0) {
                    Val::Bytes(b) => b.into_iter().map(|x| Val::Int(i64::from(x))).collect(),
                    Val::Str(s) => s.chars().map(|c| Val::Str(c.to_string())).collect(),
                    other => return Err(format!("'{}' object is not iterable", other.type_name())),
                }
            } else {
                args
            };
            let mut best: Option<Val> = None;
            for item in items {
                best = Some(match best {
                    None => item,
                    Some(b) => {
                        let better =
                            if func == "min" { compare(CmpOp::Lt, &item, &b)? } else { compare(CmpOp::Gt, &item, &b)? };
                        if better { item } else { b }
                    }
                });
            }
            best.ok_or_else(|| format!("{func}() arg is an empty sequence"))
        }
        "hex" => match first {
            Val::Int(i) => Ok(Val::Str(hex_text(i))),
            Val::Bool(b) => Ok(Val::Str(hex_text(i64::from(b)))),
            other => Err(format!("'{}' object cannot be interpreted as an integer", other.type_name())),
        },
        "len" => match &first {
            Val::Bytes(b) => Ok(Val::Int(i64::try_from(b.len()).map_err(|_| OVERFLOW)?)),
            Val::Str(s) => Ok(Val::Int(i64::try_from(s.chars().count()).map_err(|_| OVERFLOW)?)),
            other => Err(format!("object of type '{}' has no len()", other.type_name())),
        },
        other => Err(format!("`{other}` is not a function")),
    }
}

fn hex_text(i: i64) -> String {
    let magnitude = i128::from(i).unsigned_abs();
    if i < 0 { format!("-0x{magnitude:x}") } else { format!("0x{magnitude:x}") }
}

fn parse_int(s: &str, base: i64) -> Result<i64, String> {
    let invalid = || format!("invalid literal for int() with base {base}: '{s}'");
    let t = s.trim().replace('_', "");
    let (negative, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest.to_owned()),
        None => (false, t.strip_prefix('+').unwrap_or(&t).to_owned()),
    };
    let lower = digits.to_ascii_lowercase();
    let (base, digits) = match (base, lower.get(..2)) {
        (0 | 16, Some("0x")) => (16, &lower[2..]),
        (0 | 8, Some("0o")) => (8, &lower[2..]),
        (0 | 2, Some("0b")) => (2, &lower[2..]),
        (0, _) => (10, lower.as_str()),
        (b, _) if (2..=36).contains(&b) => (b, lower.as_str()),
        _ => return Err("int() base must be >= 2 and <= 36, or 0".to_owned()),
    };
    if digits.is_empty() || digits.starts_with(['+', '-']) {
        return Err(invalid());
    }
    let radix = u32::try_from(base).map_err(|_| invalid())?;
    let magnitude = u64::from_str_radix(digits, radix).map_err(|_| invalid())?;
    let v = i128::from(magnitude) * if negative { -1 } else { 1 };
    i64::try_from(v).map_err(|_| OVERFLOW.to_owned())
}

/// Python's `round(x, digits)`: the float nearest to the exactly rounded
/// decimal, halves to even on the binary value (Rust's formatting rounds
/// the exact binary value too).
fn round_float(x: f64, digits: i64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    if digits >= 0 {
        let d = usize::try_from(digits.min(300)).unwrap_or(300);
        return format!("{x:.d$}").parse().unwrap_or(x);
    }
    let p = 10f64.powi(i32::try_from(-digits).unwrap_or(i32::MAX));
    if !p.is_finite() {
        return 0.0 * x;
    }
    (x / p).round_ties_even() * p
}

#[cfg(test)]
mod tests;
