//! `wake-service usage report`: what each endpoint used over a range, what it cost, and what
//! an always-on compute of the same size would have cost (the saving scale-to-zero made).

use clap::Subcommand;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use wake_api::usage::{EndpointTotal, Prices, UsageSummary, GB};

use super::{get_json, ClientArgs};

#[derive(Subcommand, Debug)]
pub enum UsageCommand {
    /// A table per endpoint: active hours, CU-hours, GB transferred, storage, cost, the cost of
    /// an always-on compute of the same size, and the saving.
    Report {
        /// Start of the range (RFC 3339; default 30 days before --to), rounded down to the hour.
        #[arg(long)]
        from: Option<String>,
        /// End of the range (RFC 3339; default now), rounded up to the hour.
        #[arg(long)]
        to: Option<String>,
        /// Only this endpoint.
        #[arg(long)]
        endpoint: Option<String>,
        /// Price of a compute-unit hour.
        #[arg(long, default_value_t = Prices::default().cu_hour)]
        price_cu_hour: f64,
        /// Price of a GB of storage for a month (730 hours).
        #[arg(long, default_value_t = Prices::default().gb_month)]
        price_gb_month: f64,
        /// Price of a GB sent to clients.
        #[arg(long, default_value_t = Prices::default().transfer_gb)]
        price_transfer_gb: f64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn usage(command: UsageCommand) -> anyhow::Result<()> {
    let UsageCommand::Report {
        from,
        to,
        endpoint,
        price_cu_hour,
        price_gb_month,
        price_transfer_gb,
        client,
    } = command;
    let prices = Prices {
        cu_hour: price_cu_hour,
        gb_month: price_gb_month,
        transfer_gb: price_transfer_gb,
    };
    anyhow::ensure!(
        [prices.cu_hour, prices.gb_month, prices.transfer_gb]
            .iter()
            .all(|p| p.is_finite() && *p >= 0.0),
        "prices must be finite and not negative"
    );
    let mut query = Vec::new();
    for (name, value) in [("from", &from), ("to", &to)] {
        if let Some(value) = value {
            OffsetDateTime::parse(value, &Rfc3339)
                .map_err(|e| anyhow::anyhow!("--{name} '{value}' is not an RFC 3339 time: {e}"))?;
            query.push(format!("{name}={}", value.replace('+', "%2B")));
        }
    }
    let path = format!("/v1/usage?{}", query.join("&"));
    let mut summary: UsageSummary = get_json(&client, &path).await?;
    if let Some(id) = &endpoint {
        summary.endpoints.retain(|e| &e.endpoint_id == id);
        anyhow::ensure!(
            !summary.endpoints.is_empty(),
            "no endpoint '{id}' and no usage of one in the range"
        );
    }
    print!("{}", report(&summary, &prices));
    Ok(())
}

/// One endpoint's line, in the report's units.
struct Line {
    name: String,
    active_hours: f64,
    cu_hours: f64,
    egress_gb: f64,
    ingress_gb: f64,
    queries: u64,
    storage_gb: f64,
    cost: f64,
    always_on: f64,
}

impl Line {
    fn new(total: &EndpointTotal, prices: &Prices, hours: f64) -> Line {
        let usage = &total.usage;
        // A compute that did not run in the range is compared with the smallest size.
        let size = total.peak_cu.max(0.25);
        Line {
            name: if total.exists {
                total.endpoint_id.clone()
            } else {
                format!("{} (deleted)", total.endpoint_id)
            },
            active_hours: usage.active_seconds / 3600.0,
            cu_hours: usage.compute_unit_seconds / 3600.0,
            egress_gb: usage.egress_bytes as f64 / GB,
            ingress_gb: usage.ingress_bytes as f64 / GB,
            queries: usage.queries,
            storage_gb: usage.storage_bytes_avg.unwrap_or(0) as f64 / GB,
            cost: prices.cost(usage, hours),
            always_on: prices.always_on(usage, size, hours),
        }
    }

    fn row(&self) -> String {
        let saving = if self.always_on > 0.0 {
            format!("{:.0}%", (1.0 - self.cost / self.always_on) * 100.0)
        } else {
            "-".into()
        };
        format!(
            "{:<28} {:>9.2} {:>9.2} {:>9.3} {:>9.3} {:>9} {:>9.3} {:>10.4} {:>10.4} {:>7}\n",
            self.name,
            self.active_hours,
            self.cu_hours,
            self.egress_gb,
            self.ingress_gb,
            self.queries,
            self.storage_gb,
            self.cost,
            self.always_on,
            saving
        )
    }
}

/// The report as text: a header with the range and prices, a line per endpoint, a total.
fn report(summary: &UsageSummary, prices: &Prices) -> String {
    let hours = (summary.to - summary.from).as_seconds_f64() / 3600.0;
    let mut out = format!(
        "usage from {} to {} ({hours:.0} h); prices: ${}/CU-hour, ${}/GB-month, ${}/GB egress\n",
        summary.from.format(&Rfc3339).unwrap_or_default(),
        summary.to.format(&Rfc3339).unwrap_or_default(),
        prices.cu_hour,
        prices.gb_month,
        prices.transfer_gb
    );
    out.push_str(&format!(
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>7}\n",
        "endpoint",
        "active_h",
        "CU_h",
        "GB_out",
        "GB_in",
        "queries",
        "stor_GB",
        "cost_$",
        "always_on",
        "saving"
    ));
    let mut total = Line {
        name: "TOTAL".into(),
        active_hours: 0.0,
        cu_hours: 0.0,
        egress_gb: 0.0,
        ingress_gb: 0.0,
        queries: 0,
        storage_gb: 0.0,
        cost: 0.0,
        always_on: 0.0,
    };
    for endpoint in &summary.endpoints {
        let line = Line::new(endpoint, prices, hours);
        out.push_str(&line.row());
        total.active_hours += line.active_hours;
        total.cu_hours += line.cu_hours;
        total.egress_gb += line.egress_gb;
        total.ingress_gb += line.ingress_gb;
        total.queries += line.queries;
        total.storage_gb += line.storage_gb;
        total.cost += line.cost;
        total.always_on += line.always_on;
    }
    out.push_str(&total.row());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use wake_api::usage::Usage;

    #[test]
    fn the_saving_compares_with_an_always_on_compute_of_the_peak_size() {
        let summary = UsageSummary {
            from: datetime!(2026-12-01 00:00 UTC),
            to: datetime!(2026-12-01 10:00 UTC),
            endpoints: vec![EndpointTotal {
                endpoint_id: "shop".into(),
                peak_cu: 1.0,
                exists: true,
                usage: Usage {
                    active_seconds: 3600.0,
                    compute_unit_seconds: 3600.0,
                    ..Usage::default()
                },
            }],
        };
        let prices = Prices {
            cu_hour: 0.1,
            gb_month: 0.0,
            transfer_gb: 0.0,
        };
        let text = report(&summary, &prices);
        // 1 CU-hour used of 10 always-on: $0.1 against $1.0, 90% saved.
        let line = text.lines().nth(2).expect("a line for shop");
        assert!(line.starts_with("shop"), "{text}");
        assert!(
            line.contains("0.1000") && line.contains("1.0000") && line.ends_with("90%"),
            "{line}"
        );
        assert!(
            text.lines().last().is_some_and(|l| l.starts_with("TOTAL")),
            "{text}"
        );
    }
}
