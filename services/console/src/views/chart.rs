//! Usage by day as an SVG bar chart, drawn on the server by plotters: one
//! bar for each day with usage, nothing for a day without.

use plotters::prelude::*;
use rust_decimal::prelude::ToPrimitive;

use crate::domain::usage::Day;

/// The bars' colour; the tests find the bars by it.
pub const BAR: RGBColor = RGBColor(0x1f, 0x6f, 0xb4);
const WIDTH: u32 = 760;
const HEIGHT: u32 = 260;

/// The chart's SVG, or `None` if plotters could not draw it.
pub fn usage_by_day(days: &[Day], unit: &str) -> Option<String> {
    let mut svg = String::new();
    let top = days.iter().filter_map(|day| day.charged.to_f64()).fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top * 1.1 } else { 1.0 };
    let count = u32::try_from(days.len()).ok()?;
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d((1..count + 1).into_segmented(), 0.0..top)
            .ok()?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("day of the period")
            .y_desc(unit)
            .x_labels(16)
            .bold_line_style(BLACK.mix(0.15))
            .light_line_style(TRANSPARENT)
            .draw()
            .ok()?;
        let bars = days.iter().enumerate().filter(|(_, day)| !day.charged.is_zero()).filter_map(|(index, day)| {
            let number = u32::try_from(index + 1).ok()?;
            let value = day.charged.to_f64()?;
            Some(Rectangle::new(
                [(SegmentValue::Exact(number), 0.0), (SegmentValue::Exact(number + 1), value)],
                BAR.filled(),
            ))
        });
        chart.draw_series(bars).ok()?;
        root.present().ok()?;
    }
    Some(svg)
}
