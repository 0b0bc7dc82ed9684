//! Runs the pipeline: load and attach, capture until a signal, then drain.

use std::{
    sync::{Arc, mpsc as std_mpsc},
    time::Duration,
};

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
    event::{Record, RecordKind},
    loader,
    metrics::{self, Exporter, Metrics, RingFill},
    pipeline::{self, Records},
    rules::{Engine, RuleSet, SyscallSet},
    sink::{self, Control, Registry},
    stats::{self, LossTracker},
};

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
    let rules = settings.rules.sources().load()?;
    let mut rules_in_force = rules.rules.len();
    let warnings = rules.warnings.clone();
    let sinks = settings
        .outputs
        .iter()
        .map(sink::open)
        .collect::<Result<Vec<_>, _>>()?;
    let metrics = Arc::new(Metrics::new());
    metrics.install_rules(&rules.rules);
    // Bound before attaching: a port in use is a start-up error.
    let metrics_listener = match settings.metrics_listen {
        Some(addr) => Some(metrics::http::bind(addr, settings.metrics_allow_remote).await?),
        None => None,
    };

    let mut tracer = loader::load(&settings)?;
    let context_message = attach_context(
        &mut tracer.context,
        tracer.programs.as_mut(),
        &rules,
        settings.context_events,
    )?;
    let kernel_stats = Arc::new(tracer.stats);
    // Before any other thread starts: threads inherit the priority and the
    // reduced capability sets.
    eprintln!(
        "{}",
        crate::privileges::boost_priority(settings.priority_boost)
    );
    crate::privileges::drop_unless_kept(settings.keep_capabilities)?;
    let sinks = sinks.into_iter().map(sink::Opened::start).collect();
    // capture → enrich → detect → output, each joined by a bounded queue of
    // record batches (see pipeline.rs); the output stage fans out to each
    // sink's own queue.
    let (tx, enrich_rx) = pipeline::channel();
    let (enriched_tx, detect_rx) = pipeline::channel();
    let (detected_tx, output_rx) = pipeline::channel();
    let (reload_tx, reload_rx) = std_mpsc::channel::<Reload>();
    let (control_tx, control_rx) = mpsc::channel::<Control>(4);
    let registry = std::sync::Arc::new(Registry::default());
    let writer = sink::spawn_stage(sinks, output_rx, control_rx, registry.clone())
        .context("start the output thread")?;
    let mut detector = Detector::new(Engine::new(rules), settings.alerts_only)
        .print_context(settings.context_events);
    if metrics_listener.is_some() {
        detector = detector.with_metrics(metrics.clone());
    }
    let detector = detect::spawn(detect_rx, detected_tx, detector, reload_rx)
        .context("start the detection thread")?;
    let mut decoder = Decoder::new(WallClock::sample());
    let renames = tracer
        .inflight
        .take()
        .map(|slots| Box::new(slots) as Box<dyn enrich::RenameInFlight>);
    let enricher = enrich::spawn(enrich_rx, enriched_tx, decoder.drain_mark.clone(), renames)
        .context("start the enrichment thread")?;
    let mut losses = LossTracker::default();
    let mut tick = tokio::time::interval(LOSS_POLL_INTERVAL);
    let stats_period = Duration::from_secs(settings.stats_interval.max(1));
    let mut stats_tick =
        tokio::time::interval_at(tokio::time::Instant::now() + stats_period, stats_period);
    let mut drain_tick = tokio::time::interval(Duration::from_millis(DRAIN_INTERVAL_MS));
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    if let Some(listener) = metrics_listener {
        let ring = RingFill::map(&tracer.ring, settings.ring_bytes)
            .inspect_err(|e| {
                eprintln!("link-trace: warning: metrics: cannot map the ring buffer's positions, no fill gauge: {e}")
            })
            .ok();
        let stats = kernel_stats.clone();
        let exporter = Exporter {
            metrics: metrics.clone(),
            kernel: Box::new(move || stats::read_kernel(&stats).map_err(|e| e.to_string())),
            sinks: registry.clone(),
            ring,
        };
        if let Ok(addr) = listener.local_addr() {
            eprintln!("link-trace: serving metrics at http://{addr}/metrics");
        }
        metrics::http::spawn(listener, Arc::new(metrics::registry(exporter)));
    }
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
                report_stats(&kernel_stats, &decoder, &tx).await;
            }
            _ = tick.tick() => {
                decoder.clock = WallClock::sample();
                report_losses(&kernel_stats, &mut losses, &decoder, &tx).await;
            }
            _ = sighup.recv() => {
                // Everything captured so far goes ahead under the old rules.
                capture::drain(ring.get_mut(), &mut decoder, &tx).await;
                let after = (decoder.events_decoded(), decoder.context_decoded());
                if let Some((new, count)) =
                    reload(
                        &cli,
                        &settings,
                        rules_in_force,
                        after,
                        &mut tracer.context,
                        tracer.programs.as_mut(),
                        &Stages { rules_tx: &reload_tx, control_tx: &control_tx, metrics: &metrics },
                    )
                    .await
                {
                    settings = new;
                    rules_in_force = count;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = tx.closed() => break,
        }
        metrics.observe_capture(
            decoder.events_decoded(),
            decoder.decode_errors,
            decoder.undelivered,
        );
    }

    // Detach first so nothing new arrives, then take everything already captured.
    drop(tracer.programs.take());
    capture::drain(ring.get_mut(), &mut decoder, &tx).await;
    metrics.observe_capture(
        decoder.events_decoded(),
        decoder.decode_errors,
        decoder.undelivered,
    );
    report_losses(&kernel_stats, &mut losses, &decoder, &tx).await;
    report_stats(&kernel_stats, &decoder, &tx).await;
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
    let undelivered = decoder.undelivered + enrich_undelivered.events + detected.undelivered;
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
        if let Some(subscribers) = &report.subscribers {
            eprintln!(
                "link-trace: output {}: {} subscribers served, {} dropped for falling behind, {} events missed by subscribers, {} events delivered with no subscriber",
                report.name,
                subscribers.accepted,
                subscribers.dropped_slow,
                subscribers.missed_events,
                subscribers.events_without_subscriber,
            );
        }
    }
    if !tracer.context.attached.is_empty() {
        let context_undelivered =
            decoder.context_undelivered + enrich_undelivered.context + detected.context_undelivered;
        eprintln!(
            "link-trace: context records ({}): {} captured, {} lost in the kernel, {} not handed to the outputs",
            tracer.context.attached.names(),
            decoder.context_decoded(),
            losses.kernel_lost(RecordKind::Context),
            context_undelivered,
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

fn output_names(outputs: &[OutputConfig]) -> String {
    outputs
        .iter()
        .map(|o| format!("{} ({})", o.name(), o.common().format))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where a reload sends what it loaded.
struct Stages<'a> {
    rules_tx: &'a std_mpsc::Sender<Reload>,
    control_tx: &'a mpsc::Sender<Control>,
    metrics: &'a Metrics,
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
    (after_seq, after_context_seq): (u64, u64),
    context: &mut loader::ContextProbes,
    programs: Option<&mut aya::Ebpf>,
    stages: &Stages<'_>,
) -> Option<(Settings, usize)> {
    let Stages {
        rules_tx,
        control_tx,
        metrics,
    } = stages;
    let prepared = Settings::resolve(cli)
        .map_err(anyhow::Error::from)
        .and_then(|new| {
            new.check_limits()?;
            let rules = new.rules.sources().load()?;
            // Open only the outputs that are new; unchanged ones keep running.
            let opened = new
                .outputs
                .iter()
                .filter(|o| !old.outputs.contains(o))
                .map(|o| sink::open(o).map(sink::Opened::start))
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
    let restart_only = new.keep_restart_only(old);
    if !restart_only.is_empty() {
        eprintln!(
            "link-trace: warning: {} changed; that takes a restart, the old values stay in force",
            restart_only.join(", ")
        );
    }
    for warning in &rules.warnings {
        eprintln!("link-trace: warning: {warning}");
    }
    // What the new rules need is captured before they apply; attaching
    // needs the capabilities dropped after start-up, unless they were kept.
    let needed = rules.context_syscalls().without(context.attached);
    if !needed.is_empty() && !new.keep_capabilities {
        eprintln!(
            "link-trace: warning: the reloaded rules need {} captured, which takes a restart: capabilities were dropped after attach (--keep-capabilities keeps them)",
            needed.names()
        );
    } else {
        match attach_context(context, programs, &rules, new.context_events) {
            Ok(message) => eprintln!("{message}"),
            Err(e) => eprintln!(
                "link-trace: error: cannot capture what the reloaded rules need: {}",
                crate::error_chain(&e)
            ),
        }
    }
    let count = rules.rules.len();
    metrics.install_rules(&rules.rules);
    let reload = Reload {
        after_seq,
        after_context_seq,
        rules,
    };
    if rules_tx.send(reload).is_err() {
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
    tx: &mpsc::Sender<Records>,
) {
    match stats::read_kernel(stats) {
        Ok(kernel) => {
            let record = stats::stats_record(
                &kernel,
                decoder.decoded(),
                decoder.decode_errors,
                // Filled in by the output stage, in stream order.
                Vec::new(),
                &decoder.clock,
            );
            let _ = tx.send(vec![Record::Stats(Box::new(record))]).await;
        }
        Err(e) => eprintln!("link-trace: warning: cannot read kernel counters: {e}"),
    }
}

async fn report_losses(
    stats: &aya::maps::PerCpuArray<aya::maps::MapData, u64>,
    losses: &mut LossTracker,
    decoder: &Decoder,
    tx: &mpsc::Sender<Records>,
) {
    match stats::read_kernel(stats) {
        Ok(kernel) => {
            let records: Records = losses
                .records(&kernel, decoder.decode_errors, &decoder.clock)
                .into_iter()
                .map(|loss| Record::Loss(Box::new(loss)))
                .collect();
            if !records.is_empty() {
                let _ = tx.send(records).await;
            }
        }
        Err(e) => eprintln!("link-trace: warning: cannot read kernel counters: {e}"),
    }
}
