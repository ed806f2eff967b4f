//! Loads `.env` (from the working directory or the nearest parent that has one) the way the
//! course's script reads it with python-dotenv: dotenvy for the syntax it knows and, for a line
//! it refuses, what python-dotenv makes of it: `KEY=VALUE`, the value trimmed and an unquoted
//! ` #` comment dropped. So a password with spaces left unquoted works as it did for the script,
//! instead of the whole file being ignored. Variables already set win. It must never print a
//! value: a line may hold a password.

/// Loads `.env` into the environment; a missing or unreadable file loads nothing.
pub fn load() {
    let Some(text) = find().and_then(|path| super::read_bounded(&path, 1 << 20).ok()) else {
        return;
    };
    let text = text.trim_start_matches('\u{feff}');
    match dotenvy::from_read_iter(text.as_bytes()).collect::<Result<Vec<_>, _>>() {
        Ok(pairs) => pairs.into_iter().for_each(|(key, value)| set(&key, value)),
        // Some line was refused (and dotenvy's error names its value, not its key): every line
        // on its own, the refused ones read leniently. A quoted value over several lines is
        // then lost, in a file that was not loading anyway.
        Err(_) => {
            for line in text.lines() {
                match dotenvy::from_read_iter(line.as_bytes()).next() {
                    Some(Ok((key, value))) => set(&key, value),
                    Some(Err(_)) => {
                        if let Some((key, value)) = lenient(line) {
                            set(&key, value);
                        }
                    }
                    None => {}
                }
            }
        }
    }
}

/// `.env` in the working directory or the nearest parent that has one, as dotenvy looks.
fn find() -> Option<std::path::PathBuf> {
    let mut dir = std::env::current_dir().ok()?;
    loop {
        let candidate = dir.join(".env");
        if candidate.is_file() {
            return Some(candidate);
        }
        if !dir.pop() {
            return None;
        }
    }
}

fn set(key: &str, value: String) {
    if std::env::var_os(key).is_none() {
        std::env::set_var(key, value);
    }
}

/// One line as python-dotenv reads an unquoted value.
fn lenient(line: &str) -> Option<(String, String)> {
    let line = line.trim();
    let line = line.strip_prefix("export ").unwrap_or(line);
    if line.starts_with('#') {
        return None;
    }
    let (key, value) = line.split_once('=')?;
    let key = key.trim();
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        return None;
    }
    let value = value.trim();
    let value = value.find(" #").map_or(value, |i| value[..i].trim_end());
    Some((key.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::lenient;

    #[test]
    fn a_line_dotenvy_refuses_reads_as_python_dotenv_reads_it() {
        let kv = |k: &str, v: &str| Some((k.to_string(), v.to_string()));
        assert_eq!(lenient("HIVE_PSWD=pa ss word"), kv("HIVE_PSWD", "pa ss word"));
        assert_eq!(
            lenient("  HIVE_PSWD = a\"b  # the password"),
            kv("HIVE_PSWD", "a\"b")
        );
        assert_eq!(lenient("export BROKER_ADDR=x y"), kv("BROKER_ADDR", "x y"));
        for not_a_setting in ["# a comment", "", "no equals sign", "=value", "bad key=v"] {
            assert_eq!(lenient(not_a_setting), None, "{not_a_setting:?}");
        }
    }
}
