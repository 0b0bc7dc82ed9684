//! Runs the pipeline: load and attach, capture until a signal, then drain.

use std::{sync::mpsc as std_mpsc, time::Duration};

use anyhow::Context as _;
use link_trace_common::DRAIN_INTERVAL_MS;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    capture::{self, Decoder},
    cli::Cli,
    clock::WallClock,
    config::{OutputConfig, Settings},
    detect::{self, Detector, Reload},
    enrich,
    event::Record,
    loader,
    rules::Engine,
    sink::{self, Control, Registry},
    stats::{self, LossTracker},
};

/// Records queued between two stages. Small enough that a flood backed up
/// through all of them stays within the memory budget (an event is ~1-2 KiB
/// in memory); the kernel ring (8 MiB) is the real buffer.
const OUTPUT_QUEUE: usize = 1024;
const LOSS_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Returns whether every output stayed up to the end.
pub async fn run(cli: Cli) -> anyhow::Result<bool> {
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("install SIGHUP handler")?;

    // A bad configuration, rule file or output stops us before anything is
    // attached.
    let mut settings = Settings::resolve(&cli)?;
    settings.check_limits()?;
    let rules = settings.rule_sources().load()?;
    let mut rules_in_force = rules.rules.len();
    let warnings = rules.warnings.clone();
    let sinks = settings
        .outputs
        .iter()
        .map(sink::open)
        .collect::<Result<Vec<_>, _>>()?;

    let mut tracer = loader::load(&settings)?;
    // capture → enrich → detect → output, each joined by a bounded queue;
    // the output stage fans out to each sink's own queue.
    let (tx, enrich_rx) = mpsc::channel::<Record>(OUTPUT_QUEUE);
    let (enriched_tx, detect_rx) = mpsc::channel::<Record>(OUTPUT_QUEUE);
    let (detected_tx, output_rx) = mpsc::channel::<Record>(OUTPUT_QUEUE);
    let (reload_tx, reload_rx) = std_mpsc::channel::<Reload>();
    let (control_tx, control_rx) = mpsc::channel::<Control>(4);
    let registry = std::sync::Arc::new(Registry::default());
    let writer = sink::spawn_stage(sinks, output_rx, control_rx, registry.clone())
        .context("start the output thread")?;
    let detector = detect::spawn(
        detect_rx,
        detected_tx,
        Detector::new(Engine::new(rules), settings.alerts_only),
        reload_rx,
    )
    .context("start the detection thread")?;
    let enricher = enrich::spawn(enrich_rx, enriched_tx).context("start the enrichment thread")?;

    let mut decoder = Decoder::new(WallClock::sample());
    let mut losses = LossTracker::default();
    let mut tick = tokio::time::interval(LOSS_POLL_INTERVAL);
    let stats_period = Duration::from_secs(settings.stats_interval.max(1));
    let mut stats_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + stats_period, stats_period);
    let mut drain_tick = tokio::time::interval(Duration::from_millis(DRAIN_INTERVAL_MS));
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, until
    // it is dropped, which only happens after `into_inner` below.
    let mut ring = unsafe { AsyncFd::register_with_interest(tracer.ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("poll the ring buffer: {e}"))?;
    eprintln!(
        "link-trace: tracing link and linkat (syscalls:sys_enter/exit_link, _linkat); Ctrl-C to stop"
    );
    for warning in warnings {
        eprintln!("link-trace: warning: {warning}");
    }
    eprintln!(
        "link-trace: {rules_in_force} detection rules in force; outputs: {}; SIGHUP reloads the configuration and rule files",
        output_names(&settings.outputs)
    );

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("poll the ring buffer")?;
                capture::drain(guard.get_inner_mut(), &mut decoder, &tx).await;
                guard.clear_ready();
            }
            // Events the kernel queued without a wakeup (see wakeup_flag in
            // the eBPF crate) are picked up here.
            _ = drain_tick.tick() => {
                capture::drain(ring.get_mut(), &mut decoder, &tx).await;
            }
            _ = stats_tick.tick(), if settings.stats_interval > 0 => {
                report_stats(&tracer.stats, &decoder, &registry, &tx).await;
            }
            _ = tick.tick() => {
                decoder.clock = WallClock::sample();
                report_losses(&tracer.stats, &mut losses, &decoder, &tx).await;
            }
            _ = sighup.recv() => {
                // Everything captured so far goes ahead under the old rules.
                capture::drain(ring.get_mut(), &mut decoder, &tx).await;
                let after_seq = decoder.events_decoded();
                if let Some((new, count)) =
                    reload(&cli, &settings, rules_in_force, after_seq, &reload_tx, &control_tx).await
                {
                    settings = new;
                    rules_in_force = count;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = tx.closed() => break,
        }
    }

    // Detach first so nothing new arrives, then take everything already captured.
    drop(tracer.programs.take());
    capture::drain(ring.get_mut(), &mut decoder, &tx).await;
    report_losses(&tracer.stats, &mut losses, &decoder, &tx).await;
    report_stats(&tracer.stats, &decoder, &registry, &tx).await;
    drop(ring.into_inner());
    drop(control_tx);
    drop(tx);

    let summary = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the output thread panicked"))?;
    let enrich_undelivered = enricher
        .join()
        .map_err(|_| anyhow::anyhow!("the enrichment thread panicked"))?;
    let detected = detector
        .join()
        .map_err(|_| anyhow::anyhow!("the detection thread panicked"))?;
    let undelivered = decoder.undelivered + enrich_undelivered + detected.undelivered;
    eprintln!(
        "link-trace: {} events captured, {} lost in the kernel or decoder, {} not handed to the outputs",
        decoder.events_decoded(),
        losses.total_lost(),
        undelivered,
    );
    for (report, error) in &summary.sinks {
        eprintln!(
            "link-trace: output {}: {} events delivered, {} dropped (queue full), {} dropped (output failed){}{}",
            report.name,
            report.delivered_events,
            report.dropped_queue_full_events,
            report.dropped_failed_events,
            match report.truncated_records {
                0 => String::new(),
                n => format!(", {n} records truncated to fit"),
            },
            error
                .as_deref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default(),
        );
    }
    eprintln!(
        "link-trace: rules: {} alerts raised, {} undelivered; {} records left out by --alerts-only; {} window evictions",
        detected.alerts, detected.alerts_undelivered, detected.suppressed, detected.evictions,
    );
    if summary.any_closed() {
        eprintln!(
            "link-trace: error: an output went away; its undelivered events are counted above"
        );
        return Ok(false);
    }
    Ok(true)
}

fn output_names(outputs: &[OutputConfig]) -> String {
    outputs
        .iter()
        .map(|o| format!("{} ({})", o.name(), o.common().format))
        .collect::<Vec<_>>()
        .join(", ")
}

/// SIGHUP: reads the configuration file and the rule files again. The new
/// rules and outputs go into force together, or, when anything is wrong,
/// nothing changes and the error is reported. Settings that need the
/// programs reattached (filters, ring size) keep their old values, with a
/// warning. Returns the settings and rule count now in force.
async fn reload(
    cli: &Cli,
    old: &Settings,
    rules_in_force: usize,
    after_seq: u64,
    rules_tx: &std_mpsc::Sender<Reload>,
    control_tx: &mpsc::Sender<Control>,
) -> Option<(Settings, usize)> {
    let prepared = Settings::resolve(cli)
        .map_err(anyhow::Error::from)
        .and_then(|new| {
            new.check_limits()?;
            let rules = new.rule_sources().load()?;
            // Open only the outputs that are new; unchanged ones keep running.
            let opened = new
                .outputs
                .iter()
                .filter(|o| !old.outputs.contains(o))
                .map(sink::open)
                .collect::<Result<Vec<_>, _>>()?;
            Ok((new, rules, opened))
        });
    let (mut new, rules, opened) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            eprintln!(
                "link-trace: error: reload failed, keeping the configuration and the {rules_in_force} rules in force: {}",
                crate::error_chain(&*e)
            );
            return None;
        }
    };
    let restart_only = old.restart_only_changes(&new);
    if !restart_only.is_empty() {
        eprintln!(
            "link-trace: warning: {} changed; that takes a restart, the old values stay in force",
            restart_only.join(", ")
        );
        new.keep_attach_settings(old);
    }
    for warning in &rules.warnings {
        eprintln!("link-trace: warning: {warning}");
    }
    let count = rules.rules.len();
    if rules_tx.send(Reload { after_seq, rules }).is_err() {
        eprintln!("link-trace: error: reload failed: the detection stage has stopped");
        return None;
    }
    let keep = new.outputs.clone();
    if control_tx
        .send(Control::Replace { keep, new: opened })
        .await
        .is_err()
    {
        eprintln!("link-trace: error: reload failed: the output stage has stopped");
        return None;
    }
    eprintln!(
        "link-trace: reloaded: {count} rules in force; outputs: {}",
        output_names(&new.outputs)
    );
    Some((new, count))
}

async fn report_stats(
    stats: &aya::maps::PerCpuArray<aya::maps::MapData, u64>,
    decoder: &Decoder,
    registry: &Registry,
    tx: &mpsc::Sender<Record>,
) {
    match stats::read_kernel(stats) {
        Ok(kernel) => {
            let record = stats::stats_record(
                &kernel,
                decoder.events_decoded(),
                decoder.decode_errors,
                registry.current().iter().map(|c| c.report()).collect(),
                &decoder.clock,
            );
            let _ = tx.send(Record::Stats(record)).await;
        }
        Err(e) => eprintln!("link-trace: warning: cannot read kernel counters: {e}"),
    }
}

async fn report_losses(
    stats: &aya::maps::PerCpuArray<aya::maps::MapData, u64>,
    losses: &mut LossTracker,
    decoder: &Decoder,
    tx: &mpsc::Sender<Record>,
) {
    match stats::read_kernel(stats) {
        Ok(kernel) => {
            for record in losses.records(&kernel, decoder.decode_errors, &decoder.clock) {
                if tx.send(Record::Loss(record)).await.is_err() {
                    break;
                }
            }
        }
        Err(e) => eprintln!("link-trace: warning: cannot read kernel counters: {e}"),
    }
}
