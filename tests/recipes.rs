//! docs/devices.md runs as written: each recipe's configuration and example messages go through
//! `tidegate mapping test`, and its answer must read exactly as the page shows it.

mod support;

use serde_json::Value;
use support::tidegate::run_to_end;

/// One example message of a recipe.
struct Example {
    recipe: String,
    config: String,
    topic: String,
    payload: String,
    expected: String,
}

/// The page's examples. A recipe is a `## ` section; its `toml` block is the configuration; a
/// line naming a topic in backquotes after "on" announces a message, whose payload is the next
/// fenced block and its expected answer the one after.
fn examples(page: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let (mut recipe, mut config) = (String::new(), String::new());
    let mut topic: Option<String> = None;
    let mut payload: Option<String> = None;
    let mut lines = page.lines();
    while let Some(line) = lines.next() {
        if let Some(name) = line.strip_prefix("## ") {
            recipe = name.to_string();
            config.clear();
            continue;
        }
        if let Some(info) = line.strip_prefix("```") {
            let block: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            let block = block.join("\n");
            if info == "toml" {
                config = block;
            } else if let Some(t) = &topic {
                match payload.take() {
                    None => payload = Some(block),
                    Some(p) => {
                        out.push(Example {
                            recipe: recipe.clone(),
                            config: config.clone(),
                            topic: t.clone(),
                            payload: p,
                            expected: block,
                        });
                        topic = None;
                    }
                }
            }
            continue;
        }
        if let Some((_, rest)) = line.split_once(" on `") {
            if let Some((t, _)) = rest.split_once('`') {
                topic = Some(t.to_string());
                payload = None;
            }
        }
    }
    out
}

fn number_or_text(v: &Value) -> String {
    match v {
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), |f| f.to_string()),
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// The preview's answer in the page's one-line-per-reading form.
fn render(v: &Value) -> String {
    let mut lines = vec![format!("device: {}", v["device"].as_str().unwrap_or("none"))];
    lines.push(match (v["ts"].as_str(), v["ts_source"].as_str()) {
        (_, Some("received")) => "ts: the receive time".into(),
        (Some(ts), Some(source)) => format!("ts: {ts} ({source})"),
        _ => "ts: none".into(),
    });
    for r in v["readings"].as_array().into_iter().flatten() {
        let value = r.get("value").or_else(|| r.get("text")).unwrap_or(&Value::Null);
        lines.push(format!(
            "{} = {}",
            r["field"].as_str().unwrap_or("?"),
            number_or_text(value)
        ));
    }
    for m in v["mappings"].as_array().into_iter().flatten() {
        let table = m["table"].as_str().unwrap_or("?");
        match m["row"].as_object() {
            Some(row) => lines.push(format!(
                "{table}: {}",
                row.iter()
                    .map(|(k, v)| format!("{k} = {}", number_or_text(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            None => lines.push(format!("{table}: refused: {}", m["rejected"])),
        }
    }
    if let Some(note) = v["note"].as_str() {
        lines.push(format!("note: {note}"));
    }
    lines.join("\n")
}

#[test]
fn every_device_recipe_gives_what_the_page_shows() {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/devices.md")).unwrap();
    let examples = examples(&page);
    let recipes: std::collections::BTreeSet<&str> = examples.iter().map(|e| e.recipe.as_str()).collect();
    assert!(
        examples.len() >= 6 && recipes.len() >= 4,
        "the page's examples were not found: {} in {recipes:?}",
        examples.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let mut wrong = Vec::new();
    for (i, e) in examples.iter().enumerate() {
        assert!(
            !e.config.is_empty(),
            "{}: no toml block before its examples",
            e.recipe
        );
        let config = dir.path().join(format!("recipe-{i}.toml"));
        std::fs::write(&config, &e.config).unwrap();
        let (status, out) = run_to_end(
            &[
                "mapping",
                "test",
                "--config",
                config.to_str().unwrap(),
                "--topic",
                &e.topic,
                "--payload",
                &e.payload,
            ],
            &[],
            dir.path(),
        );
        assert!(status.success(), "{} on {}: {out}", e.recipe, e.topic);
        let got = render(
            &serde_json::from_str(&out)
                .unwrap_or_else(|err| panic!("{} on {}: not JSON ({err}): {out}", e.recipe, e.topic)),
        );
        if got != e.expected {
            wrong.push(format!(
                "## {} — {}\npage:\n{}\ntidegate:\n{got}",
                e.recipe, e.topic, e.expected
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}
