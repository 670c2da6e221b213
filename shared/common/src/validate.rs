//! Checking requests: every refusal names its field, and every request is
//! checked whole so a client learns all its mistakes at once.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::money::{MoneyError, Unit};
use crate::status::FieldViolation;
use crate::time::{from_timestamp, truncate_to_micros};

/// Idempotency keys: long enough for a UUID with a prefix or a composite key.
pub const IDEMPOTENCY_KEY_LENGTH_MAX: usize = 128;
/// Meter codes: short identifiers, like `gpu_seconds`.
pub const METER_CODE_LENGTH_MAX: usize = 64;

/// A request refused for the fields it got wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRequest(pub Vec<FieldViolation>);

impl From<InvalidRequest> for tonic::Status {
    fn from(invalid: InvalidRequest) -> Self {
        crate::status::invalid_argument(&invalid.0)
    }
}

/// Collects every violation of a request before answering, so a client
/// learns all its mistakes at once.
#[derive(Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Whether nothing has been found wrong so far.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Err` with every violation found, if any.
    pub fn finish(self) -> Result<(), InvalidRequest> {
        if self.0.is_empty() { Ok(()) } else { Err(InvalidRequest(self.0)) }
    }

    /// An id that may be left out (a filter): `None` when empty, refused
    /// when it is not an id.
    pub fn optional_id(&mut self, field: &str, text: &str) -> Option<Uuid> {
        if text.is_empty() { None } else { self.id(field, text, |id| id) }
    }

    pub fn id<T>(&mut self, field: &str, text: &str, wrap: impl FnOnce(Uuid) -> T) -> Option<T> {
        match Uuid::parse_str(text) {
            Ok(id) => Some(wrap(id)),
            Err(_) if text.is_empty() => {
                self.add(field, "is required");
                None
            }
            Err(_) => {
                self.add(field, "is not a valid id");
                None
            }
        }
    }

    pub fn idempotency_key(&mut self, field: &str, key: &str) {
        if key.is_empty() {
            self.add(field, "is required: every mutating call takes an idempotency key");
        } else if key.chars().count() > IDEMPOTENCY_KEY_LENGTH_MAX {
            self.add(field, format!("is longer than {IDEMPOTENCY_KEY_LENGTH_MAX} characters"));
        }
    }

    pub fn text(&mut self, field: &str, text: &str, length_max: usize) {
        if text.chars().count() > length_max {
            self.add(field, format!("is longer than {length_max} characters"));
        } else if let Some(refused) = text.chars().find(|c| refused_character(*c)) {
            self.add(
                field,
                format!(
                    "holds the character U+{:04X}: control and text-direction characters are refused",
                    u32::from(refused)
                ),
            );
        }
    }

    pub fn required_text(&mut self, field: &str, text: &str, length_max: usize) {
        if text.trim().is_empty() {
            self.add(field, "is required");
        } else {
            self.text(field, text, length_max);
        }
    }

    pub fn meter_code(&mut self, field: &str, code: &str) {
        let ok = code.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
        if code.len() > METER_CODE_LENGTH_MAX {
            self.add(field, format!("is longer than {METER_CODE_LENGTH_MAX} characters"));
        } else if !ok {
            self.add(field, "may hold only letters, digits and _ - . :");
        }
    }

    /// A string map of at most `entries_max` entries, keys of 1 to
    /// `key_length_max` characters and values of at most `value_length_max`.
    pub fn map(
        &mut self,
        field: &str,
        metadata: &BTreeMap<String, String>,
        entries_max: usize,
        key_length_max: usize,
        value_length_max: usize,
    ) {
        if metadata.len() > entries_max {
            self.add(field, format!("has more than {entries_max} entries"));
            return;
        }
        for (key, value) in metadata {
            if key.is_empty() || key.chars().count() > key_length_max {
                self.add(format!("{field}[{key}]"), format!("keys are 1 to {key_length_max} characters"));
            } else if key.chars().any(refused_character) || value.chars().any(refused_character) {
                let shown: String = key.chars().filter(|c| !refused_character(*c)).collect();
                self.add(format!("{field}[{shown}]"), "holds a control or text-direction character");
                continue;
            }
            if value.chars().count() > value_length_max {
                self.add(format!("{field}[{key}]"), format!("values are at most {value_length_max} characters"));
            }
        }
    }

    pub fn positive_amount(&mut self, field: &str, unit: &Unit, text: &str) -> Option<Decimal> {
        self.amount_with(field, text, |text| unit.parse_positive(text))
    }

    pub fn amount_with(
        &mut self,
        field: &str,
        text: &str,
        parse: impl FnOnce(&str) -> Result<Decimal, MoneyError>,
    ) -> Option<Decimal> {
        if text.is_empty() {
            self.add(field, "is required");
            return None;
        }
        match parse(text) {
            Ok(amount) => Some(amount),
            Err(error) => {
                self.add(field, error.to_string());
                None
            }
        }
    }

    pub fn time(&mut self, field: &str, timestamp: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
        let timestamp = timestamp?;
        match from_timestamp(timestamp) {
            Some(instant) => Some(truncate_to_micros(instant)),
            None => {
                self.add(field, "is not a valid instant");
                None
            }
        }
    }
}

/// Characters no text field takes: controls (NUL included; a newline or a
/// tab is allowed in free text) and the invisible marks that reorder text
/// (bidirectional overrides, embeddings and isolates), which can make a
/// statement line read differently from what it holds.
pub fn refused_character(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// A voucher code as typed, made canonical: case, spaces and hyphens do not
/// matter, and the letters Crockford's alphabet leaves out because they look
/// like digits are read as those digits (I and L as 1, O as 0).
pub fn normalize_voucher_code(input: &str) -> String {
    input
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| match c.to_ascii_uppercase() {
            'I' | 'L' => '1',
            'O' => '0',
            other => other,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_direction_marks_are_refused_in_text_and_maps() {
        for bad in ["a\0b", "\u{202E}gnp.exe", "x\u{2066}y", "bell\u{7}", "cr\r", "\u{200F}"] {
            let mut violations = Violations::default();
            violations.text("description", bad, 100);
            assert!(!violations.is_empty(), "{bad:?}");
        }
        for good in ["plain", "two\nlines", "tab\there", "naïve — ünïcode ✓", "עברית"] {
            let mut violations = Violations::default();
            violations.text("description", good, 100);
            assert!(violations.is_empty(), "{good:?}");
        }
        let mut violations = Violations::default();
        let metadata = BTreeMap::from([("k".to_owned(), "v\0".to_owned())]);
        violations.map("metadata", &metadata, 10, 10, 10);
        assert!(!violations.is_empty());
    }
}
