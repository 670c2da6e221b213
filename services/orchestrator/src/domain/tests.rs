#![allow(clippy::unwrap_used)]

use std::str::FromStr;

use chrono::{Duration, TimeZone, Utc};
use rust_decimal::Decimal;

use super::*;

fn d(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

fn settings(strategy: Strategy) -> AutoReplenish {
    AutoReplenish {
        warning_percent: 0,
        threshold: d("10"),
        strategy,
        max_top_ups_per_day: 2,
        max_credits_per_month: Some(d("100")),
        min_credits: Some(d("5")),
        max_credits: Some(d("60")),
    }
}

#[test]
fn backoff_doubles_up_to_a_minute() {
    let waits: Vec<i64> = (1..=8).map(|attempt| backoff(attempt).num_seconds()).collect();
    assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 60, 60]);
    assert_eq!(backoff(u32::MAX).num_seconds(), 60);
}

#[test]
fn a_fixed_top_up_adds_its_amount_and_to_target_fills_up_to_the_target() {
    let history = AutoHistory::default();
    assert_eq!(decide_auto(&settings(Strategy::Fixed(d("20"))), d("3"), history), AutoDecision::TopUp(d("20")));
    assert_eq!(decide_auto(&settings(Strategy::ToTarget(d("50"))), d("3"), history), AutoDecision::TopUp(d("47")));
    assert_eq!(decide_auto(&settings(Strategy::ToTarget(d("50"))), d("-20"), history), AutoDecision::TopUp(d("60")));
    assert_eq!(decide_auto(&settings(Strategy::ToTarget(d("12"))), d("9"), history), AutoDecision::TopUp(d("5")));
    assert_eq!(decide_auto(&settings(Strategy::Fixed(d("20"))), d("10"), history), AutoDecision::NotNeeded);
}

#[test]
fn the_daily_count_and_the_monthly_amount_stop_automatic_top_ups() {
    let fixed = settings(Strategy::Fixed(d("20")));
    let two_today = AutoHistory { top_ups_today: 2, credits_this_month: d("40") };
    assert_eq!(decide_auto(&fixed, d("1"), two_today), AutoDecision::Limited("MAX_TOP_UPS_PER_DAY"));
    let month_spent = AutoHistory { top_ups_today: 0, credits_this_month: d("98") };
    assert_eq!(decide_auto(&fixed, d("1"), month_spent), AutoDecision::Limited("MAX_CREDITS_PER_MONTH"));
    let month_left_exactly = AutoHistory { top_ups_today: 0, credits_this_month: d("80") };
    assert_eq!(decide_auto(&fixed, d("1"), month_left_exactly), AutoDecision::TopUp(d("20")));
}

#[test]
fn a_fixed_top_up_the_month_cannot_take_in_full_is_held_back_not_cut() {
    let month_nearly_spent = AutoHistory { top_ups_today: 0, credits_this_month: d("90") };
    let fixed = settings(Strategy::Fixed(d("20")));
    assert_eq!(decide_auto(&fixed, d("1"), month_nearly_spent), AutoDecision::Limited("MAX_CREDITS_PER_MONTH"));
    // TO_TARGET takes the month's remainder while it meets the minimum.
    let to_target = settings(Strategy::ToTarget(d("50")));
    assert_eq!(decide_auto(&to_target, d("1"), month_nearly_spent), AutoDecision::TopUp(d("10")));
    let month_all_but_spent = AutoHistory { top_ups_today: 0, credits_this_month: d("97") };
    assert_eq!(decide_auto(&to_target, d("1"), month_all_but_spent), AutoDecision::Limited("MAX_CREDITS_PER_MONTH"));
}

#[test]
fn the_per_top_up_bounds_do_not_change_a_fixed_amount() {
    let mut fixed = settings(Strategy::Fixed(d("80")));
    fixed.max_credits = None;
    fixed.min_credits = None;
    assert_eq!(decide_auto(&fixed, d("1"), AutoHistory::default()), AutoDecision::TopUp(d("80")));
}

#[test]
fn auto_replenish_pauses_at_the_third_decline_in_a_row() {
    assert!(!pauses_after(2));
    assert!(pauses_after(3));
}

#[test]
fn a_missed_period_fires_once_and_the_next_is_after_now() {
    let due = Utc.with_ymd_and_hms(2026, 1, 31, 9, 0, 0).unwrap();
    assert_eq!(Interval::Monthly.nth(due, 1), Utc.with_ymd_and_hms(2026, 2, 28, 9, 0, 0).unwrap());
    let now = due + Duration::days(100);
    let next = next_run(Interval::Weekly, due, due, now);
    assert!(next > now && next - now <= Duration::weeks(1));
    assert_eq!(next_run(Interval::Weekly, due, due, due), due + Duration::weeks(1));
    let monthly = next_run(Interval::Monthly, due, due, now);
    assert_eq!(monthly, Utc.with_ymd_and_hms(2026, 5, 31, 9, 0, 0).unwrap(), "the first period after now");
}

#[test]
fn a_monthly_top_up_keeps_its_anchor_day_after_a_short_month() {
    let anchor = Utc.with_ymd_and_hms(2026, 1, 31, 9, 0, 0).unwrap();
    let mut due = anchor;
    let mut runs = Vec::new();
    for _ in 0..4 {
        due = next_run(Interval::Monthly, anchor, due, due);
        runs.push(due.format("%Y-%m-%d").to_string());
    }
    assert_eq!(runs, ["2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31"]);
    // Years later, still the anchor's day.
    let later = Utc.with_ymd_and_hms(2031, 8, 31, 9, 0, 0).unwrap();
    assert_eq!(next_run(Interval::Monthly, anchor, later, later), Utc.with_ymd_and_hms(2031, 9, 30, 9, 0, 0).unwrap());
    let weekly_later = next_run(Interval::Weekly, anchor, later, later);
    assert_eq!((weekly_later - anchor).num_days() % 7, 0, "weekly periods stay on the anchor's weekday");
    assert!(weekly_later > later && weekly_later - later <= Duration::weeks(1));
}

#[test]
fn names_round_trip() {
    for status in [Status::Pending, Status::RequiresAction, Status::Succeeded, Status::Failed] {
        assert_eq!(Status::from_name(status.name()), Some(status));
    }
    for step in [Step::CreateInvoice, Step::Charge, Step::AwaitPayment, Step::Grant, Step::MarkPaid, Step::Done] {
        assert_eq!(Step::from_name(step.name()), Some(step));
    }
}
