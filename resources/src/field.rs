//! A cursor over a decoded manifest that remembers its field path, so every
//! validation error can say exactly which field is wrong.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::FieldError;

pub(crate) type FResult<T> = Result<T, FieldError>;

/// A value inside a manifest together with its path from the object root.
#[derive(Debug, Clone)]
pub(crate) struct At<'a> {
    pub(crate) v: &'a Value,
    pub(crate) path: String,
}

impl<'a> At<'a> {
    pub(crate) fn root(v: &'a Value) -> Self {
        Self {
            v,
            path: String::new(),
        }
    }

    pub(crate) fn err(&self, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: if self.path.is_empty() {
                "(root)".to_string()
            } else {
                self.path.clone()
            },
            reason: reason.into(),
        }
    }

    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// An error about `key` under this value, whether or not it exists.
    pub(crate) fn err_at(&self, key: &str, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: self.child_path(key),
            reason: reason.into(),
        }
    }

    /// The field `key`; `None` when absent or `null` (Kubernetes treats both
    /// as unset).
    pub(crate) fn get(&self, key: &str) -> Option<At<'a>> {
        match self.v.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(At {
                v,
                path: self.child_path(key),
            }),
        }
    }

    pub(crate) fn req(&self, key: &str) -> FResult<At<'a>> {
        self.get(key).ok_or_else(|| self.err_at(key, "required"))
    }

    pub(crate) fn str(&self) -> FResult<&'a str> {
        self.v
            .as_str()
            .ok_or_else(|| self.err(format!("must be a string, not {}", kind_of(self.v))))
    }

    pub(crate) fn opt_str(&self, key: &str) -> FResult<Option<&'a str>> {
        self.get(key).map(|a| a.str()).transpose()
    }

    /// A string field where absent and empty mean the same.
    pub(crate) fn str_or_empty(&self, key: &str) -> FResult<String> {
        Ok(self.opt_str(key)?.unwrap_or_default().to_string())
    }

    pub(crate) fn req_str(&self, key: &str) -> FResult<&'a str> {
        let s = self.req(key)?;
        let v = s.str()?;
        if v.is_empty() {
            return Err(s.err("must not be empty"));
        }
        Ok(v)
    }

    pub(crate) fn bool(&self, key: &str) -> FResult<bool> {
        match self.get(key) {
            None => Ok(false),
            Some(a) => {
                a.v.as_bool()
                    .ok_or_else(|| a.err(format!("must be a boolean, not {}", kind_of(a.v))))
            }
        }
    }

    /// Strict decoding, as `kubectl apply --validate=strict` and calicoctl do: every
    /// field of this object must be one of `known`. A misspelled field is an error
    /// naming it, never silently dropped (dropped, `notNet` or `sourc` would leave a
    /// rule matching everything).
    pub(crate) fn only(&self, known: &[&str]) -> FResult<()> {
        let Some(map) = self.v.as_object() else {
            return self.is_object();
        };
        match map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(self.err_at(
                k,
                format!("unknown field; expected one of: {}", known.join(", ")),
            )),
            None => Ok(()),
        }
    }

    pub(crate) fn is_object(&self) -> FResult<()> {
        if self.v.is_object() {
            Ok(())
        } else {
            Err(self.err(format!("must be an object, not {}", kind_of(self.v))))
        }
    }

    /// The elements of the array field `key` (empty when absent).
    pub(crate) fn items(&self, key: &str) -> FResult<Vec<At<'a>>> {
        let Some(a) = self.get(key) else {
            return Ok(Vec::new());
        };
        let arr =
            a.v.as_array()
                .ok_or_else(|| a.err(format!("must be a list, not {}", kind_of(a.v))))?;
        Ok(arr
            .iter()
            .enumerate()
            .map(|(i, v)| At {
                v,
                path: format!("{}[{i}]", a.path),
            })
            .collect())
    }

    pub(crate) fn str_list(&self, key: &str) -> FResult<Vec<String>> {
        self.items(key)?
            .iter()
            .map(|a| a.str().map(str::to_string))
            .collect()
    }

    /// A string-to-string map such as `metadata.labels`.
    pub(crate) fn str_map(&self, key: &str) -> FResult<BTreeMap<String, String>> {
        let Some(a) = self.get(key) else {
            return Ok(BTreeMap::new());
        };
        let obj =
            a.v.as_object()
                .ok_or_else(|| a.err(format!("must be a map, not {}", kind_of(a.v))))?;
        obj.iter()
            .map(|(k, v)| {
                let item = At {
                    v,
                    path: format!("{}.{k}", a.path),
                };
                Ok((k.clone(), item.str()?.to_string()))
            })
            .collect()
    }

    /// `metadata.labels`: keys and values as Kubernetes accepts them.
    pub(crate) fn label_map(&self, key: &str) -> FResult<BTreeMap<String, String>> {
        let labels = self.str_map(key)?;
        for (k, v) in &labels {
            let err = |reason: &str| FieldError {
                field: format!("{}.{k}", self.child_path(key)),
                reason: reason.to_string(),
            };
            if let Some(why) = crate::names::label_key_error(k) {
                return Err(err(&format!("{k:?} is not a valid label key: {why}")));
            }
            if let Some(why) = crate::names::label_value_error(v) {
                return Err(err(&format!("{v:?} is not a valid label value: {why}")));
            }
        }
        Ok(labels)
    }

    /// An integer within `[min, max]`.
    pub(crate) fn int(&self, min: i64, max: i64) -> FResult<i64> {
        let n = self
            .v
            .as_i64()
            .ok_or_else(|| self.err(format!("must be an integer, not {}", kind_of(self.v))))?;
        if n < min || n > max {
            return Err(self.err(format!("{n} is out of range {min}..={max}")));
        }
        Ok(n)
    }

    pub(crate) fn float(&self) -> FResult<f64> {
        self.v
            .as_f64()
            .ok_or_else(|| self.err(format!("must be a number, not {}", kind_of(self.v))))
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}
