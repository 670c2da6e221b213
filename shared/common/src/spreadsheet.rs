//! CSV that is safe to open in a spreadsheet. A cell starting with `=`, `+`,
//! `-`, `@`, a tab or a carriage return is read there as a formula (OWASP's
//! CSV injection), and customer-chosen text (descriptions, metadata,
//! dimension values) lands in the cells of statements and reports. Such a
//! cell is written with a leading `'`, which spreadsheets show as text; a
//! plain number such as `-12.50` is left alone, so amounts stay numbers.
//!
//! The escaping is written here because the `csv` crate quotes for CSV's
//! own syntax only.

use std::borrow::Cow;

/// A CSV writer into memory whose every cell is made safe by [`safe_cell`].
pub struct SafeWriter {
    inner: csv::Writer<Vec<u8>>,
}

impl Default for SafeWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl SafeWriter {
    pub fn new() -> Self {
        Self { inner: csv::Writer::from_writer(Vec::new()) }
    }

    /// Writes one record, each cell made safe.
    pub fn write_record<I, T>(&mut self, record: I) -> Result<(), csv::Error>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        self.inner.write_record(record.into_iter().map(|cell| safe_cell(cell.as_ref()).into_owned()))
    }

    /// The bytes written.
    pub fn into_inner(self) -> Result<Vec<u8>, std::io::Error> {
        self.inner.into_inner().map_err(|error| error.into_error())
    }
}

/// `cell` as a spreadsheet will show it, not run it.
pub fn safe_cell(cell: &str) -> Cow<'_, str> {
    let risky = cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if risky && !crate::money::is_plain_decimal(cell) { Cow::Owned(format!("'{cell}")) } else { Cow::Borrowed(cell) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn formulas_are_shown_as_text_and_numbers_stay_numbers() {
        for cell in ["=HYPERLINK(\"http://x\")", "+1+1", "-1+cmd|' /C calc'!A0", "@SUM(A1)", "\t=1", "\r=1", "-", "--5"]
        {
            assert_eq!(safe_cell(cell), format!("'{cell}"), "{cell:?}");
        }
        for cell in ["-12.50", "-3", "12.50", "plain text", "", "a=b", "0.00"] {
            assert_eq!(safe_cell(cell), cell, "{cell:?}");
        }
    }

    #[test]
    fn the_writer_escapes_every_cell_and_still_quotes_for_csv() {
        let mut writer = SafeWriter::new();
        writer.write_record(["=1+1", "-4.00", "a,b"]).unwrap();
        let text = String::from_utf8(writer.into_inner().unwrap()).unwrap();
        assert_eq!(text, "'=1+1,-4.00,\"a,b\"\n");
    }
}
