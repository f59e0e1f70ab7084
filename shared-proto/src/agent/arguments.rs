//! A call's arguments as hubs send and receive them: a JSON object in canonical form (compact,
//! keys in ascending order, each once), which is what the envelope's hash binds and what the app
//! receives (docs/PROTOCOL.md section 13). A target refuses anything else with
//! [`CallErrorCode::ArgumentsMismatch`], so no two byte strings stand for the same arguments.

use serde_json::{Map, Value};

use super::CallErrorCode;

/// A call's arguments.
pub type Arguments = Map<String, Value>;

/// Why arguments were refused (always [`CallErrorCode::ArgumentsMismatch`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArgumentsError {
    /// Not a JSON object.
    #[error("arguments are not a JSON object: {0}")]
    NotAnObject(String),
    /// A JSON object, not in canonical form.
    #[error(
        "arguments are not in canonical JSON (compact, keys in ascending order, each once; \
         docs/PROTOCOL.md section 13): the app would not receive the bytes the envelope binds"
    )]
    NotCanonical,
}

impl ArgumentsError {
    /// The call's refusal code.
    pub fn code(&self) -> CallErrorCode {
        CallErrorCode::ArgumentsMismatch
    }
}

/// The arguments a call carried, checked: `None` for none (no bytes), else the object, if the
/// bytes are its canonical form.
pub fn received(bytes: &[u8]) -> Result<Option<Arguments>, ArgumentsError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let object: Arguments =
        serde_json::from_slice(bytes).map_err(|e| ArgumentsError::NotAnObject(e.to_string()))?;
    if serde_json::to_vec(&object).map_err(|e| ArgumentsError::NotAnObject(e.to_string()))? != bytes
    {
        return Err(ArgumentsError::NotCanonical);
    }
    Ok(Some(object))
}

/// `text` (a JSON object; empty or blank for none) in the canonical form a call carries.
pub fn canonical(text: &str) -> Result<Vec<u8>, ArgumentsError> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    let object: Arguments =
        serde_json::from_str(text).map_err(|e| ArgumentsError::NotAnObject(e.to_string()))?;
    serde_json::to_vec(&object).map_err(|e| ArgumentsError::NotAnObject(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_canonical_form_is_received() {
        let canonical_bytes = canonical(r#"{ "b": 1, "a": {"d": 2, "c": 3} }"#).unwrap();
        assert_eq!(canonical_bytes, br#"{"a":{"c":3,"d":2},"b":1}"#);
        assert_eq!(received(&canonical_bytes).unwrap().unwrap()["b"], 1);
        assert_eq!(received(b"").unwrap(), None);
        for bad in [
            &br#"{"b":1,"a":2}"#[..],
            br#"{"a": 1}"#,
            br#"{"a":1,"a":1}"#,
        ] {
            assert_eq!(received(bad), Err(ArgumentsError::NotCanonical), "{bad:?}");
        }
        assert!(matches!(
            received(b"[1]"),
            Err(ArgumentsError::NotAnObject(_))
        ));
        assert!(matches!(
            canonical("nope"),
            Err(ArgumentsError::NotAnObject(_))
        ));
        assert_eq!(canonical(" ").unwrap(), b"{}");
    }
}
