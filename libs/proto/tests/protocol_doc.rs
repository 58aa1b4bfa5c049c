//! docs/protocol.md against the code. The reference's frame tables and its `json client` /
//! `json server` examples must agree with each other and with the Rust types:
//! - every frame type the code knows is documented with an example, and every documented type is
//!   known to the code or listed under "Not yet implemented" (and only then);
//! - each example decodes (client frames through [`Envelope::decode`], exactly as the edge does) and
//!   encodes back to the same JSON, so it holds no field the code would drop or miss;
//! - each table row lists exactly the fields its examples have together (`?` marks an optional
//!   one, which an example may leave out; a required one is in every example).
//!
//! Fields the reference describes but the code lacks are listed under "Not yet implemented
//! (fields)" and removed from the examples before the comparison; a listed field that the code
//! has is an error too, so the list cannot go stale.

use std::collections::{BTreeMap, BTreeSet};

use chat_proto::{CLIENT_TYPES, ClientFrame, Envelope, SERVER_TYPES, ServerFrame};
use serde_json::{Map, Value};

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");
    std::fs::read_to_string(path).expect("read docs/protocol.md")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    Client,
    Server,
}

/// The examples of one direction, by type, in document order.
fn examples(doc: &str, dir: Dir) -> Vec<(String, Map<String, Value>)> {
    let fence = match dir {
        Dir::Client => "```json client",
        Dir::Server => "```json server",
    };
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if line.trim() != fence {
            continue;
        }
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        let text = body.join("\n");
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("example is not JSON ({e}): {text}"));
        let Value::Object(map) = value else {
            panic!("example is not an object: {text}")
        };
        let ty = map["type"].as_str().expect("example has a type").to_owned();
        out.push((ty, map));
    }
    out
}

/// The rows of the frame table that follows `anchor`: type → (field, optional).
fn table(doc: &str, anchor: &str) -> BTreeMap<String, Vec<(String, bool)>> {
    let start = doc
        .find(&format!("<a id=\"{anchor}\"></a>"))
        .unwrap_or_else(|| panic!("no anchor {anchor}"));
    let mut rows = BTreeMap::new();
    let mut in_table = false;
    for line in doc[start..].lines() {
        if !line.starts_with('|') {
            if in_table {
                break;
            }
            continue;
        }
        in_table = true;
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(ty), Some(fields)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Some(ty) = ty.strip_prefix('`').and_then(|t| t.strip_suffix('`')) else {
            continue; // the header and the separator
        };
        rows.insert(ty.to_owned(), field_list(fields));
    }
    rows
}

/// `room, since?, limits {a, b}, rooms [{…}]; in history also version, edited?` → the top-level
/// names with their optionality. Braces, brackets and parentheses describe nested shapes and are
/// skipped; `;` and `also` join further fields.
fn field_list(cell: &str) -> Vec<(String, bool)> {
    let mut flat = String::new();
    let mut depth = 0;
    for c in cell.chars() {
        match c {
            '{' | '[' | '(' => depth += 1,
            '}' | ']' | ')' => depth -= 1,
            _ if depth == 0 => flat.push(c),
            _ => {}
        }
    }
    let flat = flat.replace(';', ",");
    flat.split(',')
        .filter_map(|part| {
            let word = part.split_whitespace().last()?;
            let optional = word.ends_with('?');
            Some((word.trim_end_matches('?').to_owned(), optional))
        })
        .collect()
}

/// The lists under "Status of this release": client types, server types and `type.field`s.
fn pending(doc: &str) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    let list = |label: &str| -> BTreeSet<String> {
        doc.lines()
            .find_map(|l| l.strip_prefix(&format!("- Not yet implemented ({label}):")))
            .map(|rest| {
                rest.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    (list("client"), list("server"), list("fields"))
}

fn is_message_object(map: &Map<String, Value>) -> bool {
    ["seq", "prev_seq", "from", "client_id"]
        .iter()
        .all(|k| map.contains_key(*k))
        && map.contains_key("body")
}

/// Removes the pending fields of `ty` (and `message.*` from every message object inside;
/// `entry.*` from every object of a list inside, such as a history page's entries).
fn strip_pending(ty: &str, map: &mut Map<String, Value>, fields: &BTreeSet<String>) {
    for f in fields {
        if let Some((owner, name)) = f.split_once('.')
            && (owner == ty || (owner == "message" && is_message_object(map)))
        {
            map.remove(name);
        }
    }
    for v in map.values_mut() {
        if let Value::Array(items) = v {
            for item in items {
                if let Value::Object(inner) = item {
                    strip_pending("entry", inner, fields);
                }
            }
        }
    }
}

fn round_trip(dir: Dir, map: &Map<String, Value>) -> Result<Value, String> {
    let text = Value::Object(map.clone()).to_string();
    match dir {
        Dir::Client => {
            let env =
                Envelope::decode(&text).map_err(|e| format!("{:?}: {}", e.code, e.message))?;
            let mut back = serde_json::to_value(&env.frame).map_err(|e| e.to_string())?;
            let obj = back.as_object_mut().ok_or("not an object")?;
            if let Some(r) = env.reference {
                obj.insert("ref".into(), Value::String(r));
            }
            if let Some(t) = env.traceparent {
                obj.insert("traceparent".into(), Value::String(t));
            }
            Ok(back)
        }
        Dir::Server => {
            let frame: ServerFrame = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            serde_json::to_value(&frame).map_err(|e| e.to_string())
        }
    }
}

fn check_direction(dir: Dir) {
    let doc = doc();
    let (client_pending, server_pending, field_pending) = pending(&doc);
    let (anchor, known, pending_types): (_, &[&str], _) = match dir {
        Dir::Client => ("ws-client-frames", CLIENT_TYPES, client_pending),
        Dir::Server => ("ws-server-frames", SERVER_TYPES, server_pending),
    };
    let rows = table(&doc, anchor);
    let documented: BTreeSet<String> = rows.keys().cloned().collect();
    let known: BTreeSet<String> = known.iter().map(|s| s.to_string()).collect();
    let missing: Vec<_> = known.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "{dir:?} types not documented: {missing:?}"
    );
    let unknown: BTreeSet<String> = documented.difference(&known).cloned().collect();
    assert_eq!(
        unknown, pending_types,
        "{dir:?}: documented types the code lacks must be exactly those listed as not yet implemented"
    );

    let examples = examples(&doc, dir);
    let with_example: BTreeSet<String> = examples.iter().map(|(t, _)| t.clone()).collect();
    let no_example: Vec<_> = documented.difference(&with_example).collect();
    assert!(
        no_example.is_empty(),
        "{dir:?} types without an example: {no_example:?}"
    );

    let mut failures = Vec::new();
    // The table lists the fields its examples have together (an optional field may be absent
    // from one example, e.g. `before` and `after` exclude each other), no more and no fewer; a
    // required field is in every example.
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (ty, example) in &examples {
        let keys = seen.entry(ty.clone()).or_default();
        keys.extend(example.keys().filter(|k| *k != "traceparent").cloned());
        for (field, optional) in &rows[ty] {
            if !optional && !example.contains_key(field) {
                failures.push(format!("{ty}: an example lacks the required field {field}"));
            }
        }
    }
    for (ty, mut keys) in seen {
        let mut listed: BTreeSet<String> = rows[&ty].iter().map(|(f, _)| f.clone()).collect();
        listed.extend(["type".to_owned(), "ref".to_owned()]);
        keys.insert("ref".into());
        if listed != keys {
            failures.push(format!(
                "{ty}: table lists {listed:?}, examples have {keys:?}"
            ));
        }
    }
    for (ty, example) in examples {
        if pending_types.contains(&ty) {
            continue;
        }
        let mut stripped = example.clone();
        strip_pending(&ty, &mut stripped, &field_pending);
        match round_trip(dir, &stripped) {
            Ok(back) if back == Value::Object(stripped.clone()) => {}
            Ok(back) => failures.push(format!(
                "{ty}: example {} comes back as {back}",
                Value::Object(stripped.clone())
            )),
            Err(e) => failures.push(format!("{ty}: example does not decode: {e}")),
        }
        // A pending field that the code has is no longer pending.
        for f in &field_pending {
            let Some((owner, name)) = f.split_once('.') else {
                continue;
            };
            if owner != ty || !example.contains_key(name) {
                continue;
            }
            let mut with = stripped.clone();
            with.insert(name.to_owned(), example[name].clone());
            if let Ok(back) = round_trip(dir, &with)
                && back.get(name) == Some(&example[name])
            {
                failures.push(format!(
                    "{f} is implemented: remove it from the pending list"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn client_frames_match_the_reference() {
    check_direction(Dir::Client);
}

#[test]
fn server_frames_match_the_reference() {
    check_direction(Dir::Server);
}

#[test]
fn field_lists_are_read_as_written() {
    assert_eq!(
        field_list(
            "ref?, room, limits {max_body, a}, rooms [{room, kind}]; in history also version, edited?"
        ),
        vec![
            ("ref".to_owned(), true),
            ("room".to_owned(), false),
            ("limits".to_owned(), false),
            ("rooms".to_owned(), false),
            ("version".to_owned(), false),
            ("edited".to_owned(), true),
        ]
    );
    assert!(field_list("").is_empty());
}

#[test]
fn every_client_frame_type_has_a_name() {
    // ClientFrame and CLIENT_TYPES agree (the decoder relies on it for unknown_type).
    let ping = Envelope::decode(r#"{"type":"ping"}"#).unwrap().frame;
    assert_eq!(ping, ClientFrame::Ping);
    assert!(CLIENT_TYPES.contains(&ping.type_name()));
}
