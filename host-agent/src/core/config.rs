//! The agent's TOML configuration file: the same settings as the flags, which
//! override it. Keys are the long flag names (`api-socket` or `api_socket`);
//! booleans are flags, lists repeat the flag, and the `ifindex` table maps interface
//! names to indexes. Example:
//!
//! ```toml
//! felix-socket = "/var/run/calico/felix-dataplane.sock"
//! api-group = "capo"
//! metrics = "127.0.0.1:9464"
//! log-format = "json"
//! [ifindex]
//! tun3 = 11
//! ```

use std::ffi::OsString;

/// Why the config file could not be used (each message names the file).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// It cannot be read.
    #[error("--config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// It is not TOML.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's error.
        source: toml::de::Error,
    },
    /// A key that names no flag.
    #[error("{path}: unknown setting {key:?}")]
    UnknownSetting {
        /// The file.
        path: String,
        /// The key.
        key: String,
    },
    /// A value that is not a string, number, boolean, list or (for `ifindex`) table.
    #[error("{path}: {key}: {value} is not a string or number")]
    NotScalar {
        /// The file.
        path: String,
        /// The key.
        key: String,
        /// The value, as TOML.
        value: String,
    },
}

/// Builds the argument list: the config file's settings first, then the command
/// line's, so flags win (single-valued flags override; lists add up).
///
/// `known_flags` lists the long flags the program accepts; a key that names none
/// of them is an error naming the file and the key.
pub fn args_with_config(
    argv: Vec<OsString>,
    known_flags: &[String],
) -> Result<Vec<OsString>, ConfigError> {
    let Some(path) = config_path(&argv) else {
        return Ok(argv);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|source| ConfigError::Parse {
        path: path.clone(),
        source,
    })?;
    let mut from_file: Vec<OsString> = Vec::new();
    for (key, value) in table {
        let name = key.replace('_', "-");
        if name == "config" || !known_flags.contains(&name) {
            return Err(ConfigError::UnknownSetting {
                path: path.clone(),
                key,
            });
        }
        let flag = format!("--{name}");
        let scalar = |v: &toml::Value| -> Result<String, ConfigError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                other => Err(ConfigError::NotScalar {
                    path: path.clone(),
                    key: key.clone(),
                    value: other.to_string(),
                }),
            }
        };
        match &value {
            toml::Value::Boolean(true) => from_file.push(flag.into()),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for item in items {
                    from_file.push(flag.clone().into());
                    from_file.push(scalar(item)?.into());
                }
            }
            toml::Value::Table(t) if name == "ifindex" => {
                for (ifname, idx) in t {
                    from_file.push(flag.clone().into());
                    from_file.push(format!("{ifname}={}", scalar(idx)?).into());
                }
            }
            v => {
                from_file.push(flag.into());
                from_file.push(scalar(v)?.into());
            }
        }
    }
    let mut out = Vec::with_capacity(argv.len() + from_file.len());
    let mut rest = argv.into_iter();
    out.extend(rest.next());
    out.extend(from_file);
    out.extend(rest);
    Ok(out)
}

fn config_path(argv: &[OsString]) -> Option<String> {
    let mut it = argv
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next();
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(p.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        [
            "felix-socket",
            "enable-inject",
            "resources",
            "ifindex",
            "api-socket",
            "config",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn run(toml: &str, cli: &[&str]) -> Result<Vec<String>, String> {
        let path = std::env::temp_dir().join(format!(
            "capo-config-{}-{}.toml",
            std::process::id(),
            toml.len()
        ));
        std::fs::write(&path, toml).unwrap();
        let mut argv: Vec<OsString> =
            vec!["capo-agent".into(), "--config".into(), path.clone().into()];
        argv.extend(cli.iter().map(OsString::from));
        let r = args_with_config(argv, &known());
        std::fs::remove_file(&path).ok();
        r.map(|v| {
            v.into_iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect()
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn file_settings_come_first_so_flags_win() {
        let out = run(
            "felix_socket = \"/a.sock\"\nenable-inject = true\nresources = [\"d1\", \"d2\"]\n[ifindex]\ntun3 = 11\n",
            &["--felix-socket", "/b.sock"],
        )
        .unwrap();
        let pos_a = out.iter().position(|a| a == "/a.sock").unwrap();
        let pos_b = out.iter().position(|a| a == "/b.sock").unwrap();
        assert!(pos_a < pos_b);
        assert!(out.contains(&"--enable-inject".to_string()));
        assert_eq!(out.iter().filter(|a| *a == "--resources").count(), 2);
        assert!(out.contains(&"tun3=11".to_string()));
    }

    #[test]
    fn unknown_keys_and_bad_syntax_are_errors_naming_the_file() {
        let e = run("no-such-thing = 1\n", &[]).unwrap_err();
        assert!(e.contains("unknown setting \"no-such-thing\""), "{e}");
        let e = run("felix-socket = [\n", &[]).unwrap_err();
        assert!(e.contains("capo-config-"), "{e}");
        let e = run("felix-socket = { a = 1 }\n", &[]).unwrap_err();
        assert!(e.contains("felix-socket"), "{e}");
    }

    #[test]
    fn without_config_the_arguments_are_untouched() {
        let argv: Vec<OsString> = vec!["capo-agent".into(), "--enable-inject".into()];
        assert_eq!(args_with_config(argv.clone(), &known()).unwrap(), argv);
    }
}
