#![allow(clippy::unwrap_used)]

use std::str::FromStr;

use reservoir_common::money::Unit;
use rust_decimal::Decimal;

use super::*;

fn d(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

fn usd() -> Pricing {
    Pricing::of(&Unit::currency("USD", None).unwrap()).unwrap()
}

fn credits_at(price: &str) -> Pricing {
    Pricing::of(&Unit::credit("CREDIT", 4, price, "EUR").unwrap()).unwrap()
}

fn usage(meter: &str, quantity: &str, charged: &str, uncovered: &str) -> UsageLine {
    UsageLine {
        meter_code: meter.into(),
        dimension_key: String::new(),
        dimension_value: String::new(),
        charged_quantity: d(quantity),
        charged_credits: d(charged),
        uncovered_credits: d(uncovered),
    }
}

#[test]
fn only_the_documented_transitions_are_allowed() {
    use InvoiceStatus::*;
    let all = [Draft, Open, Paid, Void, Uncollectible];
    let allowed =
        [(Draft, Open), (Draft, Void), (Open, Void), (Open, Paid), (Open, Uncollectible), (Uncollectible, Paid)];
    for from in all {
        for to in all {
            let expected = from == to || allowed.contains(&(from, to));
            assert_eq!(from.may_become(to), expected, "{from:?} -> {to:?}");
        }
    }
}

#[test]
fn credits_of_a_custom_unit_are_priced_in_its_billing_currency_and_rounded_half_even_once() {
    let pricing = credits_at("0.0125");
    assert_eq!(pricing.currency.code(), "EUR");
    // 1,000 credits at 0.0125 = 12.5 exactly; 2 credits = 0.025, which rounds to 0.02 (half-even).
    assert_eq!(pricing.in_currency(d("1000")), Some(d("12.50")));
    assert_eq!(pricing.in_currency(d("2")), Some(d("0.02")));
    assert_eq!(pricing.in_currency(d("6")), Some(d("0.08")));
    let lines = top_up_lines(d("1000"), &pricing, "").unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].amount, d("12.50"));
    assert_eq!(lines[0].unit_price, Some(d("0.0125")));
    assert_eq!(total(&lines), Some(d("12.50")));
}

#[test]
fn a_month_covered_by_credits_is_due_exactly_zero_whatever_the_rounding() {
    let pricing = credits_at("0.0125");
    // Three meters whose rounded amounts do not add up to the rounded whole.
    let usage = [usage("a", "2", "2", "0"), usage("b", "2", "2", "0"), usage("c", "2", "2", "0")];
    let statement = statement(&usage, Drawdown { charged: d("6"), on_overdraft: d("0") }, &pricing).unwrap();
    assert_eq!(statement.amount_due, d("0"));
    assert_eq!(total(&statement.lines), Some(d("0")), "the lines sum to the amount due");
    let applied = statement.lines.iter().find(|line| line.kind == LineKind::CreditsApplied).unwrap();
    assert_eq!(applied.amount, d("-0.06"));
    assert_eq!(applied.quantity, d("-6"));
}

#[test]
fn the_overdraft_part_of_a_month_is_due_and_credits_pay_the_rest() {
    let statement =
        statement(&[usage("tokens", "150", "150", "0")], Drawdown { charged: d("150"), on_overdraft: d("50") }, &usd())
            .unwrap();
    assert_eq!(statement.amount_due, d("50"));
    assert_eq!(statement.debt_credits, d("50"));
    let amounts: Vec<(LineKind, Decimal)> = statement.lines.iter().map(|line| (line.kind, line.amount)).collect();
    assert_eq!(amounts, vec![(LineKind::Usage, d("150")), (LineKind::CreditsApplied, d("-100"))]);
    assert_eq!(total(&statement.lines), Some(d("50")));
}

#[test]
fn charges_outside_metering_get_their_own_line_and_uncovered_usage_is_listed_not_billed() {
    let statement =
        statement(&[usage("tokens", "10", "10", "4")], Drawdown { charged: d("13"), on_overdraft: d("0") }, &usd())
            .unwrap();
    let other = statement.lines.iter().find(|line| line.kind == LineKind::Other).unwrap();
    assert_eq!(other.amount, d("3"));
    assert_eq!(statement.uncovered, d("4"));
    assert_eq!(statement.amount_due, d("0"));
}

#[test]
fn months_parse_and_bound_their_instants() {
    let month = Month::parse("2026-10").unwrap();
    assert_eq!(month.to_string(), "2026-10");
    assert_eq!(month.start().to_rfc3339(), "2026-10-01T00:00:00+00:00");
    assert_eq!(month.end().to_rfc3339(), "2026-11-01T00:00:00+00:00");
    assert_eq!(Month::parse("2026-12").unwrap().end().to_rfc3339(), "2027-01-01T00:00:00+00:00");
    assert_eq!(Month::parse("2026-01").unwrap().previous().to_string(), "2025-12");
    for bad in ["2026-13", "2026-1", "26-01", "2026/01", "", "2026-00"] {
        assert_eq!(Month::parse(bad), None, "{bad}");
    }
}

#[test]
fn the_automatic_cycle_runs_the_previous_month_once() {
    let now = Month::parse("2026-11").unwrap().start() + chrono::Duration::hours(3);
    assert_eq!(cycle_due(now, None), Month::parse("2026-10"));
    assert_eq!(cycle_due(now, Month::parse("2026-09")), Month::parse("2026-10"));
    assert_eq!(cycle_due(now, Month::parse("2026-10")), None);
}
