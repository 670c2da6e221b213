//! Pages of list calls, as AIP-158 describes them: a page token is opaque
//! (base64, not a cursor to edit), continues only the request it came from
//! (the same filters; a different page size is fine), and no empty page
//! ever follows the last one: a list reads one row past its page to know
//! whether another follows.

use std::fmt::{Debug, Display};
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::validate::Violations;

/// Rows a page holds when the request does not say.
pub const PAGE_SIZE_DEFAULT: u32 = 100;
/// The most a request may ask for.
pub const PAGE_SIZE_MAX: u32 = 1_000;

/// The size a request asks for (the default when unset); past the maximum
/// it is a violation on `page_size`. For lists without page tokens too
/// (the latest N of something).
pub fn page_size(violations: &mut Violations, page_size: u32) -> u32 {
    if page_size > PAGE_SIZE_MAX {
        violations.add("page_size", format!("must be at most {PAGE_SIZE_MAX}"));
    }
    if page_size == 0 { PAGE_SIZE_DEFAULT } else { page_size.min(PAGE_SIZE_MAX) }
}

/// One page of a list request: its size, where it starts, and what binds
/// its token to the request's filters.
#[derive(Debug)]
pub struct Page<P> {
    pub size: u32,
    /// The position the previous page ended at; `None` on the first page.
    pub after: Option<P>,
    binding: String,
}

impl<P: FromStr + Display> Page<P> {
    /// Reads `page_size` and `page_token` of a request whose filters are
    /// `filters` (every field but the page's, as a tuple): a size past the
    /// maximum, or a token from another request or not from this service,
    /// is a violation on its field.
    pub fn of(violations: &mut Violations, page_size: u32, page_token: &str, filters: &impl Debug) -> Self {
        let size = self::page_size(violations, page_size);
        let binding = binding(filters);
        let after = if page_token.is_empty() {
            None
        } else {
            let decoded = URL_SAFE_NO_PAD.decode(page_token).ok().and_then(|bytes| String::from_utf8(bytes).ok());
            match decoded.as_deref().and_then(|token| token.split_once('.')) {
                Some((bound, position)) if bound == binding => match position.parse() {
                    Ok(position) => Some(position),
                    Err(_) => {
                        violations.add("page_token", "is not a token this service returned");
                        None
                    }
                },
                Some(_) => {
                    violations.add("page_token", "belongs to a request with other filters; start again without it");
                    None
                }
                None => {
                    violations.add("page_token", "is not a token this service returned");
                    None
                }
            }
        };
        Self { size, after, binding }
    }

    /// How many rows to read: one past the page.
    pub fn rows_to_read(&self) -> u64 {
        u64::from(self.size) + 1
    }

    /// The page of `rows` (read with [`Self::rows_to_read`]) and the token of
    /// the next one, empty when none follows; `position` is where a row
    /// leaves the listing.
    pub fn finish<T>(&self, mut rows: Vec<T>, position: impl Fn(&T) -> P) -> (Vec<T>, String) {
        let more = rows.len() > self.size as usize;
        rows.truncate(self.size as usize);
        let token = match (more, rows.last()) {
            (true, Some(last)) => URL_SAFE_NO_PAD.encode(format!("{}.{}", self.binding, position(last))),
            _ => String::new(),
        };
        (rows, token)
    }
}

/// A short digest of a request's filters. Their Debug text quotes strings,
/// so ("ab", "c") and ("a", "bc") differ.
fn binding(filters: &impl Debug) -> String {
    hex::encode(&Sha256::digest(format!("{filters:?}").as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::Page;
    use crate::validate::Violations;

    fn first_page(size: u32, filters: &impl std::fmt::Debug) -> Page<u64> {
        let mut violations = Violations::default();
        let page = Page::of(&mut violations, size, "", filters);
        assert!(violations.finish().is_ok());
        page
    }

    #[test]
    fn the_last_page_has_no_token_and_no_empty_page_follows() {
        let page = first_page(2, &("account-1",));
        assert_eq!(page.rows_to_read(), 3);
        let (rows, token) = page.finish(vec![10_u64, 11, 12], |row| *row);
        assert_eq!(rows, vec![10, 11]);
        assert!(!token.is_empty());
        let mut violations = Violations::default();
        let next: Page<u64> = Page::of(&mut violations, 2, &token, &("account-1",));
        assert!(violations.finish().is_ok());
        assert_eq!(next.after, Some(11));
        // Exactly a page left: it is the last.
        let (rows, token) = next.finish(vec![12_u64, 13], |row| *row);
        assert_eq!((rows, token), (vec![12, 13], String::new()));
    }

    #[test]
    fn a_token_is_opaque_and_continues_only_its_own_request() {
        let page = first_page(1, &("account-1", "PENDING"));
        let (_, token) = page.finish(vec![7_u64, 8], |row| *row);
        let alphabet = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        assert!(token.chars().all(alphabet), "URL-safe base64, not a readable cursor: {token}");
        let refused = |token: &str, filters: (&str, &str)| {
            let mut violations = Violations::default();
            let _: Page<u64> = Page::of(&mut violations, 1, token, &filters);
            let invalid = violations.finish().unwrap_err();
            let fields: Vec<&str> = invalid.0.iter().map(|violation| violation.field.as_str()).collect();
            assert_eq!(fields, vec!["page_token"]);
        };
        refused(&token, ("account-1", "SUCCEEDED"));
        refused(&token, ("account-2", "PENDING"));
        refused("before:0192", ("account-1", "PENDING"));
        refused("not base64!", ("account-1", "PENDING"));
        // Another page size is the same request.
        let mut violations = Violations::default();
        let page: Page<u64> = Page::of(&mut violations, 50, &token, &("account-1", "PENDING"));
        assert!(violations.finish().is_ok());
        assert_eq!(page.after, Some(7));
    }

    #[test]
    fn a_page_size_past_the_maximum_is_refused_and_zero_means_the_default() {
        let mut violations = Violations::default();
        let _: Page<u64> = Page::of(&mut violations, 1_001, "", &());
        assert!(violations.finish().is_err());
        assert_eq!(first_page(0, &()).size, super::PAGE_SIZE_DEFAULT);
    }
}
