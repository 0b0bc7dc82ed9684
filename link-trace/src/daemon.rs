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
    detect::{self, Detector, Reload},
    enrich,
    event::{Record, RecordKind},
    loader,
    output::{self, Format},
    rules::{Engine, RuleSet, Sources, SyscallSet},
    stats::{self, LossTracker},
};

/// Records queued between two stages. Small enough that a flood backed up
/// through all of them stays within the memory budget (an event is ~1-2 KiB
/// in memory); the kernel ring (8 MiB) is the real buffer.
const OUTPUT_QUEUE: usize = 1024;
const LOSS_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Returns whether every captured event was delivered.
pub async fn run(cli: Cli) -> anyhow::Result<bool> {
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("install SIGHUP handler")?;

    // A bad rule file stops us before anything is attached.
    let sources = cli.rules.sources();
    let rules = sources.load()?;
    let mut rules_in_force = rules.rules.len();
    let warnings = rules.warnings.clone();

    let mut tracer = loader::load(&cli)?;
    let context_message = attach_context(
        &mut tracer.context,
        tracer.programs.as_mut(),
        &rules,
        cli.context_events,
    )?;
    let format = if cli.json { Format::Json } else { Format::Text };
    // capture → enrich → detect → output, each joined by a bounded queue.
    let (tx, enrich_rx) = mpsc::channel::<Record>(OUTPUT_QUEUE);
    let (enriched_tx, detect_rx) = mpsc::channel::<Record>(OUTPUT_QUEUE);
    let (detected_tx, output_rx) = mpsc::channel::<Record>(OUTPUT_QUEUE);
    let (reload_tx, reload_rx) = std_mpsc::channel::<Reload>();
    let writer = output::spawn(format, output_rx);
    let detector = detect::spawn(
        detect_rx,
        detected_tx,
        Detector::new(Engine::new(rules), cli.alerts_only).print_context(cli.context_events),
        reload_rx,
    )
    .context("start the detection thread")?;
    let enricher = enrich::spawn(enrich_rx, enriched_tx).context("start the enrichment thread")?;

    let mut decoder = Decoder::new(WallClock::sample());
    let mut losses = LossTracker::default();
    let mut tick = tokio::time::interval(LOSS_POLL_INTERVAL);
    let stats_period = Duration::from_secs(cli.stats_interval.max(1));
    let mut stats_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + stats_period, stats_period);
    let mut drain_tick = tokio::time::interval(Duration::from_millis(DRAIN_INTERVAL_MS));
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, until
    // it is dropped, which only happens after `into_inner` below.
    let mut ring = unsafe { AsyncFd::register_with_interest(tracer.ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("poll the ring buffer: {e}"))?;
    eprintln!("{context_message}");
    eprintln!(
        "link-trace: tracing link and linkat (syscalls:sys_enter/exit_link, _linkat); Ctrl-C to stop"
    );
    for warning in warnings {
        eprintln!("link-trace: warning: {warning}");
    }
    eprintln!(
        "link-trace: {rules_in_force} detection rules in force; SIGHUP reloads the rule files"
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
            _ = stats_tick.tick(), if cli.stats_interval > 0 => {
                report_stats(&tracer.stats, &decoder, &tx).await;
            }
            _ = tick.tick() => {
                decoder.clock = WallClock::sample();
                report_losses(&tracer.stats, &mut losses, &decoder, &tx).await;
            }
            _ = sighup.recv() => {
                // Everything captured so far goes ahead under the old rules.
                capture::drain(ring.get_mut(), &mut decoder, &tx).await;
                let after = (decoder.events_decoded(), decoder.context_decoded());
                if let Some(set) = reload_rules(&sources, rules_in_force) {
                    // What the new rules need is captured before they apply.
                    let programs = tracer.programs.as_mut();
                    match attach_context(&mut tracer.context, programs, &set, cli.context_events) {
                        Ok(message) => eprintln!("{message}"),
                        Err(e) => eprintln!(
                            "link-trace: error: cannot capture what the reloaded rules need: {}",
                            crate::error_chain(&e)
                        ),
                    }
                    if let Some(count) = send_reload(set, after, &reload_tx) {
                        rules_in_force = count;
                    }
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
    report_stats(&tracer.stats, &decoder, &tx).await;
    drop(ring.into_inner());
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
    let undelivered = summary.events_undelivered
        + decoder.undelivered
        + enrich_undelivered.events
        + detected.undelivered;
    eprintln!(
        "link-trace: {} events captured, {} written, {} lost in the kernel or decoder, {} undelivered",
        decoder.events_decoded(),
        summary.events_written,
        losses.total_lost(),
        undelivered,
    );
    if !tracer.context.attached.is_empty() {
        let context_undelivered = summary.context_undelivered
            + decoder.context_undelivered
            + enrich_undelivered.context
            + detected.context_undelivered;
        eprintln!(
            "link-trace: context records ({}): {} captured, {} written, {} lost in the kernel, {} undelivered",
            tracer.context.attached.names(),
            decoder.context_decoded(),
            summary.context_written,
            losses.kernel_lost(RecordKind::Context),
            context_undelivered,
        );
    }
    eprintln!(
        "link-trace: rules: {} alerts raised, {} undelivered; {} records left out by --alerts-only; {} window evictions",
        detected.alerts, detected.alerts_undelivered, detected.suppressed, detected.evictions,
    );
    if let Some(e) = summary.error {
        eprintln!("link-trace: error: output failed: {e}; {undelivered} events were not delivered");
        return Ok(false);
    }
    Ok(true)
}

/// Captures the context syscalls (unlink, rename) the rules in force see,
/// or all of them with --context-events; returns the line that says what is
/// captured and why.
fn attach_context(
    probes: &mut loader::ContextProbes,
    programs: Option<&mut aya::Ebpf>,
    rules: &RuleSet,
    print: bool,
) -> Result<String, loader::LoadError> {
    let by_rules = rules.context_syscalls();
    let wanted = if print { SyscallSet::CONTEXT } else { by_rules };
    probes.attach(programs, wanted)?;
    let missing = wanted.intersection(probes.unavailable);
    if !missing.is_empty() {
        eprintln!(
            "link-trace: warning: this kernel has no tracepoints for {}: not captured",
            missing.names()
        );
    }
    let captured = probes.attached;
    if captured.is_empty() {
        return Ok(
            "link-trace: unlink and rename calls are not captured: no rule in force needs them (--context-events captures and prints them)".into(),
        );
    }
    let for_rules = rules.rules_seeing(captured);
    let why = if for_rules.is_empty() {
        "for --context-events".to_owned()
    } else {
        format!("as context for the rules {}", for_rules.join(", "))
    };
    let shown = if print {
        "printed as kind \"context\" (--context-events)"
    } else {
        "not printed (--context-events prints them)"
    };
    Ok(format!(
        "link-trace: capturing {} {why}; {shown}",
        captured.names()
    ))
}

/// Loads the rule files again; a broken file keeps the rules in force.
fn reload_rules(sources: &Sources, in_force: usize) -> Option<RuleSet> {
    match sources.load() {
        Ok(set) => {
            for warning in &set.warnings {
                eprintln!("link-trace: warning: {warning}");
            }
            Some(set)
        }
        Err(e) => {
            eprintln!(
                "link-trace: error: rule reload failed, keeping the {in_force} rules in force: {}",
                crate::error_chain(&e)
            );
            None
        }
    }
}

/// Hands a reloaded rule set to the detection stage, to apply after the
/// (events, context records) already decoded. Returns the new rule count.
fn send_reload(
    set: RuleSet,
    (after_seq, after_context_seq): (u64, u64),
    tx: &std_mpsc::Sender<Reload>,
) -> Option<usize> {
    let count = set.rules.len();
    if tx
        .send(Reload {
            after_seq,
            after_context_seq,
            rules: set,
        })
        .is_err()
    {
        eprintln!("link-trace: error: rule reload failed: the detection stage has stopped");
        return None;
    }
    eprintln!("link-trace: reloaded rules: {count} in force");
    Some(count)
}

async fn report_stats(
    stats: &aya::maps::PerCpuArray<aya::maps::MapData, u64>,
    decoder: &Decoder,
    tx: &mpsc::Sender<Record>,
) {
    match stats::read_kernel(stats) {
        Ok(kernel) => {
            let record = stats::stats_record(
                &kernel,
                decoder.decoded(),
                decoder.decode_errors,
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
