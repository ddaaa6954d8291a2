use super::*;
use serde_json::Value as Json;

/// The variables of `cases/generate.py`'s `VARS`, in its order.
fn vars(i: u64) -> (Val, Vec<u8>) {
    match i {
        0 => (Val::Int(6), vec![0x01, 0x02, 0xFF, 0x80, 0x7F, 0x00, 0x10, 0x04]),
        1 => (Val::Int(-7), vec![0xAB, 0xCD]),
        2 => (Val::Float(2.5), vec![]),
        _ => (Val::Bool(true), vec![0x00]),
    }
}

fn expected(result: &Json) -> Result<Val, ()> {
    let (kind, v) = result.as_object().and_then(|o| o.iter().next()).expect("a result");
    Ok(match kind.as_str() {
        "bool" => Val::Bool(v.as_bool().expect("bool")),
        "int" => Val::Int(v.as_i64().expect("int")),
        "float" => Val::Float(v.as_f64().expect("float")),
        "str" => Val::Str(v.as_str().expect("str").to_owned()),
        "bytes" => Val::Bytes(v.as_array().expect("list").iter().map(|b| b.as_u64().expect("byte") as u8).collect()),
        "none" => Val::None,
        _ => return Err(()),
    })
}

#[test]
fn every_case_gives_pythons_result() {
    let mut checked = 0;
    for line in include_str!("../cases/python.json").lines() {
        let case: Json = serde_json::from_str(line).expect("a case");
        let text = case["expr"].as_str().expect("expr");
        let (value, can_data) = vars(case["vars"].as_u64().expect("vars"));
        let expr = Expr::parse(text).unwrap_or_else(|e| panic!("`{text}` does not parse: {e}"));
        let got = expr.eval(&|name| match name {
            "value" => Some(value.clone()),
            "can_data" => Some(Val::Bytes(can_data.clone())),
            _ => None,
        });
        match (expected(&case["result"]), got) {
            (Ok(want), Ok(got)) => assert_eq!(got, want, "`{text}` with vars {}", case["vars"]),
            (Err(()), Err(_)) => {}
            (Ok(want), Err(e)) => panic!("`{text}` with vars {}: Python gives {want}, tbgw fails: {e}", case["vars"]),
            (Err(()), Ok(got)) => {
                panic!("`{text}` with vars {}: Python fails ({}), tbgw gives {got}", case["vars"], case["result"])
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 488, "every line of cases/python.json");
}

#[test]
fn what_could_reach_outside_is_refused_at_parse() {
    for (text, why) in [
        ("__import__('os')", "not a function"),
        ("__import__('os').system('id')", "attribute access"),
        ("().__class__.__bases__[0].__subclasses__()", "attribute access"),
        ("(1, 2)", "tuples"),
        ("(1).__class__", "attribute access"),
        ("value.real", "attribute access"),
        ("can_data.hex()", "attribute access"),
        ("__builtins__", "dunder"),
        ("lambda: 1", "`lambda` is not part"),
        ("[x for x in can_data]", "lists"),
        ("open('/etc/passwd')", "not a function"),
        ("eval('1')", "not a function"),
        ("globals()", "not a function"),
        ("getattr(value, 'real')", "not a function"),
        ("value = 1", "assignment"),
        ("{'a': 1}", "dictionaries"),
        ("b'x'", "string prefixes"),
        ("int(value)(1)", "only the functions may be called"),
        ("(int)(1)", "only the functions may be called"),
        ("value if value", "expected `else`"),
        ("1 +", "unexpected end"),
        ("'open", "closing quote"),
        ("abs(1, 2)", "abs() takes 1"),
    ] {
        let e = Expr::parse(text).expect_err(text);
        assert!(e.message.contains(why), "`{text}`: {e}");
    }
    let e = Expr::parse("value + __import__('os')").expect_err("import");
    assert_eq!(e.at, 8, "{e}");
    assert_eq!(
        e.to_string(),
        "`__import__` is not a function here; the functions are int, float, bool, round, abs, min, max, hex, len (at character 9)"
    );
}

#[test]
fn the_documentation_examples_give_pythons_results() {
    let speed = Expr::parse("userSpeed if maxAllowedSpeed > userSpeed else maxAllowedSpeed").expect("parses");
    assert_eq!(speed.names(), ["userSpeed", "maxAllowedSpeed"]);
    let run = |user: i64, max: i64| {
        speed.eval(&|n| match n {
            "userSpeed" => Some(Val::Int(user)),
            "maxAllowedSpeed" => Some(Val::Int(max)),
            _ => None,
        })
    };
    assert_eq!(run(50, 80), Ok(Val::Int(50)));
    assert_eq!(run(90, 80), Ok(Val::Int(80)));
    let door = Expr::parse("bool(value & 0b00000100)").expect("parses");
    assert_eq!(door.eval(&|_| Some(Val::Int(0x0C))), Ok(Val::Bool(true)));
    assert_eq!(door.eval(&|_| Some(Val::Int(0x08))), Ok(Val::Bool(false)));
    let missing = Expr::parse("value + 5").expect("parses").eval(&|_| None);
    assert_eq!(missing, Err("name 'value' is not defined".to_owned()));
}

#[test]
fn nesting_is_bounded() {
    let deep = format!("{}1{}", "(".repeat(200), ")".repeat(200));
    assert!(Expr::parse(&deep).expect_err("too deep").message.contains("nested more than 64"));
    let negations = format!("{}1", "-".repeat(200));
    assert!(Expr::parse(&negations).is_err());
    let ok = format!("{}1{}", "(".repeat(30), ")".repeat(30));
    assert_eq!(Expr::parse(&ok).expect("30 deep").eval(&|_| None), Ok(Val::Int(1)));
}
