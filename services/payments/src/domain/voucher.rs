//! Voucher codes and the rules of redeeming them.
//!
//! A code is 16 characters of Crockford's base32 (80 random bits) and a
//! check character, shown as `XXXX-XXXX-XXXX-XXXX-C`. The check character
//! is Crockford's mod-37 symbol, so a mistyped character or two swapped
//! neighbours are caught before any lookup. Only a digest of a code is
//! stored.

use chrono::{DateTime, Duration, Utc};
use rand::Rng;
use reservoir_common::ids::AccountId;
use sha2::{Digest, Sha256};

use super::Refusal;

/// Crockford's base32 alphabet: digits and letters without I, L, O and U,
/// which are too easily misread.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// The check symbols: the alphabet, then five more for the values 32 to 36.
const CHECK_ALPHABET: &[u8; 37] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ*~$=U";
/// Characters of a code without its check character: 16 base32 characters
/// carry 80 random bits, far beyond what anyone can guess.
pub const CODE_LENGTH: usize = 16;
/// Random bytes per code: 80 bits.
const CODE_BYTES: usize = 10;
/// Characters per group when a code is shown.
const GROUP_LENGTH: usize = 4;

/// An account may enter this many unknown codes within one window; the
/// next redemption is refused until the window ends. Five lets a person
/// retype a code a few times, and keeps a script to 480 guesses a day,
/// which against 80-bit codes is nothing.
pub const VOUCHER_FAILURES_MAX: u32 = 5;
/// The window unknown codes are counted in: long enough to stop a script,
/// short enough that a person who mistyped is not kept out for long.
pub const VOUCHER_FAILURE_WINDOW: Duration = Duration::seconds(15 * 60);

/// Why an entered code is not a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("is not a voucher code: 16 characters and a check character are expected")]
    Malformed,
    #[error("has a wrong check character: a character is mistyped")]
    CheckFailed,
}

/// A well-formed voucher code: its 16 characters without separators or check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VoucherCode(String);

impl VoucherCode {
    /// A new code from the thread's generator, which the operating system seeds.
    pub fn generate() -> Self {
        let mut bytes = [0_u8; CODE_BYTES];
        rand::rng().fill(&mut bytes);
        Self::from_bytes(bytes)
    }

    /// The code whose 80 bits are `bytes`.
    pub fn from_bytes(bytes: [u8; CODE_BYTES]) -> Self {
        let mut value = [0_u8; 16];
        value[16 - CODE_BYTES..].copy_from_slice(&bytes);
        let value = u128::from_be_bytes(value);
        let characters = (0..CODE_LENGTH)
            .map(|index| {
                let shift = 5 * (CODE_LENGTH - 1 - index);
                // Masked to five bits, so always within the alphabet.
                char::from(ALPHABET[((value >> shift) & 0x1f) as usize])
            })
            .collect();
        Self(characters)
    }

    /// The code as people see it: groups of four and the check character.
    pub fn display(&self) -> String {
        let mut shown = String::with_capacity(CODE_LENGTH + CODE_LENGTH / GROUP_LENGTH + 1);
        for (index, character) in self.0.chars().enumerate() {
            if index > 0 && index % GROUP_LENGTH == 0 {
                shown.push('-');
            }
            shown.push(character);
        }
        shown.push('-');
        shown.push(check_symbol(&self.0));
        shown
    }

    /// What is stored of a code: the SHA-256 of its 16 characters, in hex.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }

    /// Reads a code as a person may type it (see [`normalize_code`]) and
    /// verifies its check character.
    pub fn parse(input: &str) -> Result<Self, CodeError> {
        check_code(&normalize_code(input))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A code as typed, made canonical (shared with the orchestrator, which
/// keys a redemption by it).
pub use reservoir_common::validate::normalize_voucher_code as normalize_code;

/// The value of a base32 character.
fn value_of(character: u8) -> Option<u32> {
    ALPHABET.iter().position(|c| *c == character).and_then(|position| u32::try_from(position).ok())
}

/// The check symbol of 16 base32 characters: the number they spell, mod 37.
/// 37 is a prime above 32, so changing one character, or swapping two
/// different neighbours, always changes the remainder.
fn check_symbol(code: &str) -> char {
    let remainder = code.bytes().filter_map(value_of).fold(0_u32, |remainder, value| (remainder * 32 + value) % 37);
    char::from(CHECK_ALPHABET[remainder as usize])
}

/// Verifies a normalized code: 16 base32 characters and the right check symbol.
pub fn check_code(normalized: &str) -> Result<VoucherCode, CodeError> {
    let bytes = normalized.as_bytes();
    if bytes.len() != CODE_LENGTH + 1 {
        return Err(CodeError::Malformed);
    }
    let (code, check) = bytes.split_at(CODE_LENGTH);
    if !code.iter().all(|c| ALPHABET.contains(c)) || !CHECK_ALPHABET.contains(&check[0]) {
        return Err(CodeError::Malformed);
    }
    // All ASCII, checked above.
    let code = String::from_utf8_lossy(code).into_owned();
    if check_symbol(&code) != char::from(check[0]) {
        return Err(CodeError::CheckFailed);
    }
    Ok(VoucherCode(code))
}

/// The unknown codes an account entered in its current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureWindow {
    pub started_at: DateTime<Utc>,
    pub failures: u32,
}

impl FailureWindow {
    fn is_open(&self, now: DateTime<Utc>) -> bool {
        now < self.started_at + VOUCHER_FAILURE_WINDOW
    }

    /// Whether the account must wait before redeeming again.
    pub fn is_exhausted(&self, now: DateTime<Utc>) -> bool {
        self.is_open(now) && self.failures >= VOUCHER_FAILURES_MAX
    }

    /// The window after one more unknown code: the open window counts it,
    /// or a new window starts with it.
    pub fn after_failure(previous: Option<Self>, now: DateTime<Utc>) -> Self {
        match previous {
            Some(window) if window.failures > 0 && window.is_open(now) => {
                Self { started_at: window.started_at, failures: window.failures.saturating_add(1) }
            }
            _ => Self { started_at: now, failures: 1 },
        }
    }
}

/// What redeeming a found voucher does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redemption {
    /// Redeem it now for the account.
    Redeem,
    /// The account redeemed it before: a retry, answered with the voucher.
    AlreadyYours,
}

/// Whether `account` may redeem a voucher redeemed by `redeemed_by` (if
/// anyone) that expires at `expires_at` (if ever). A voucher already
/// redeemed by the same account is answered even after it expired: the
/// retry must see what the first call did.
pub fn redemption(
    redeemed_by: Option<AccountId>,
    expires_at: Option<DateTime<Utc>>,
    account: AccountId,
    now: DateTime<Utc>,
) -> Result<Redemption, Refusal> {
    match redeemed_by {
        Some(holder) if holder == account => Ok(Redemption::AlreadyYours),
        Some(_) => Err(Refusal::VoucherAlreadyRedeemed),
        None if expires_at.is_some_and(|expiry| expiry <= now) => Err(Refusal::VoucherExpired),
        None => Ok(Redemption::Redeem),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashSet;

    use super::*;

    /// Codes from fixed bit patterns and from the generator.
    fn sample() -> Vec<VoucherCode> {
        let mut codes: Vec<VoucherCode> = (0_u8..=255)
            .step_by(3)
            .map(|seed| {
                let mut bytes = [0_u8; CODE_BYTES];
                for (index, byte) in bytes.iter_mut().enumerate() {
                    *byte = seed.wrapping_mul(31).wrapping_add(u8::try_from(index).unwrap().wrapping_mul(97));
                }
                VoucherCode::from_bytes(bytes)
            })
            .collect();
        codes.push(VoucherCode::from_bytes([0; CODE_BYTES]));
        codes.push(VoucherCode::from_bytes([0xff; CODE_BYTES]));
        codes.extend((0..100).map(|_| VoucherCode::generate()));
        codes
    }

    #[test]
    fn a_code_is_shown_in_groups_with_its_check_character_and_reads_back() {
        for code in sample() {
            let shown = code.display();
            assert_eq!(shown.len(), 21, "{shown}");
            let groups: Vec<&str> = shown.split('-').collect();
            assert_eq!(groups.iter().map(|group| group.len()).collect::<Vec<_>>(), vec![4, 4, 4, 4, 1]);
            assert!(code.as_str().bytes().all(|c| ALPHABET.contains(&c)));
            assert_eq!(VoucherCode::parse(&shown), Ok(code));
        }
    }

    #[test]
    fn the_check_symbol_is_the_value_mod_37() {
        assert_eq!(check_symbol("0000000000000000"), '0');
        assert_eq!(check_symbol("000000000000000Z"), 'Z', "31 mod 37");
        assert_eq!(check_symbol("0000000000000010"), '*', "32 mod 37 is the first extra symbol");
        assert_eq!(check_symbol("0000000000000014"), 'U', "36 mod 37 is the last");
        assert_eq!(check_symbol("0000000000000015"), '0', "37 mod 37");
    }

    #[test]
    fn every_single_substitution_is_caught() {
        for code in sample().into_iter().take(40) {
            let shown: Vec<u8> = normalize_code(&code.display()).into_bytes();
            for position in 0..shown.len() {
                let alphabet: &[u8] = if position < CODE_LENGTH { ALPHABET } else { CHECK_ALPHABET };
                for &replacement in alphabet {
                    if replacement == shown[position] {
                        continue;
                    }
                    let mut typed = shown.clone();
                    typed[position] = replacement;
                    let typed = String::from_utf8(typed).unwrap();
                    assert_eq!(check_code(&typed), Err(CodeError::CheckFailed), "{typed} passed");
                }
            }
        }
    }

    #[test]
    fn every_adjacent_transposition_is_caught() {
        for code in sample() {
            let shown: Vec<u8> = normalize_code(&code.display()).into_bytes();
            for position in 0..CODE_LENGTH - 1 {
                if shown[position] == shown[position + 1] {
                    continue;
                }
                let mut typed = shown.clone();
                typed.swap(position, position + 1);
                let typed = String::from_utf8(typed).unwrap();
                assert_eq!(check_code(&typed), Err(CodeError::CheckFailed), "{typed} passed");
            }
        }
    }

    #[test]
    fn codes_are_read_as_people_type_them() {
        let code = VoucherCode::from_bytes([7, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let shown = code.display();
        assert_eq!(VoucherCode::parse(&shown.to_lowercase()), Ok(code.clone()));
        assert_eq!(VoucherCode::parse(&format!("  {}  ", shown.replace('-', " "))), Ok(code.clone()));
        assert_eq!(VoucherCode::parse(&shown.replace('-', "")), Ok(code.clone()));
        assert_eq!(normalize_code("il-o Io"), "11010");
        // A code with a 1 and a 0 typed as the letters they look like.
        let with_digits = VoucherCode::from_bytes([0; CODE_BYTES]).display();
        assert_eq!(VoucherCode::parse(&with_digits.replace('0', "O")), Ok(VoucherCode::from_bytes([0; CODE_BYTES])));
        assert_eq!(VoucherCode::parse(&with_digits.replace('0', "o")), Ok(VoucherCode::from_bytes([0; CODE_BYTES])));
        assert_eq!(VoucherCode::parse(""), Err(CodeError::Malformed));
        assert_eq!(VoucherCode::parse("1234"), Err(CodeError::Malformed));
        assert_eq!(VoucherCode::parse(&format!("{shown}0")), Err(CodeError::Malformed));
        assert_eq!(VoucherCode::parse("UUUU-UUUU-UUUU-UUUU-0"), Err(CodeError::Malformed), "U is not a data character");
    }

    #[test]
    fn generated_codes_differ_and_only_their_digest_depends_on_them() {
        let codes: HashSet<VoucherCode> = (0..1_000).map(|_| VoucherCode::generate()).collect();
        assert_eq!(codes.len(), 1_000);
        let code = VoucherCode::from_bytes([1; CODE_BYTES]);
        assert_eq!(code.digest().len(), 64);
        assert_eq!(VoucherCode::parse(&code.display().to_lowercase()).unwrap().digest(), code.digest());
    }

    #[test]
    fn five_unknown_codes_in_a_window_lock_the_account_until_it_ends() {
        let start = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut window = FailureWindow::after_failure(None, start);
        for minute in 1..VOUCHER_FAILURES_MAX {
            assert!(!window.is_exhausted(start + Duration::minutes(i64::from(minute))));
            window = FailureWindow::after_failure(Some(window), start + Duration::minutes(i64::from(minute)));
        }
        assert_eq!(window.failures, VOUCHER_FAILURES_MAX);
        assert!(window.is_exhausted(start + Duration::minutes(5)));
        assert!(window.is_exhausted(start + VOUCHER_FAILURE_WINDOW - Duration::seconds(1)));
        assert!(!window.is_exhausted(start + VOUCHER_FAILURE_WINDOW));
        let next = FailureWindow::after_failure(Some(window), start + VOUCHER_FAILURE_WINDOW);
        assert_eq!(next, FailureWindow { started_at: start + VOUCHER_FAILURE_WINDOW, failures: 1 });
        let empty = FailureWindow { started_at: start, failures: 0 };
        let restarted = FailureWindow::after_failure(Some(empty), start + Duration::minutes(3));
        assert_eq!(restarted.started_at, start + Duration::minutes(3), "a window without failures starts anew");
    }

    #[test]
    fn a_voucher_is_redeemed_once_and_not_after_it_expires() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let (mine, theirs) = (AccountId::generate(), AccountId::generate());
        assert_eq!(redemption(None, None, mine, now), Ok(Redemption::Redeem));
        assert_eq!(redemption(None, Some(now + Duration::hours(1)), mine, now), Ok(Redemption::Redeem));
        assert_eq!(redemption(None, Some(now), mine, now), Err(Refusal::VoucherExpired));
        assert_eq!(redemption(Some(mine), Some(now - Duration::hours(1)), mine, now), Ok(Redemption::AlreadyYours));
        assert_eq!(redemption(Some(theirs), None, mine, now), Err(Refusal::VoucherAlreadyRedeemed));
    }
}
