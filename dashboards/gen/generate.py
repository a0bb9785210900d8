#!/usr/bin/env python3
"""The single source of CryptoViz's Grafana dashboards, alert rules and alert-rule unit tests.

Writes (relative to the repository root):
  dashboards/cryptoviz-pipelines.json        overview of every pipeline
  dashboards/cryptoviz-pipeline.json         one pipeline, per instance
  dashboards/cryptoviz-operator.json         the operator
  dashboards/alerts.rules.yaml               Prometheus rule file (groups:), shipped by the Helm chart
  dashboards/prometheusrule.yaml             the same groups as a Prometheus Operator PrometheusRule
  dashboards/tests/alerts_test.yml           `promtool test rules` fixtures: every alert fires and resolves

Usage: dashboards/gen/generate.py           regenerate (then run charts/sync-assets)
       dashboards/gen/generate.py --check   exit 1 when a committed file differs from what this script writes

Python 3 standard library only. Metric names are those the binaries export (operator/src/metrics.rs,
workers/src/*/metrics.rs, workers/src/bus/kafka.rs); tests/tests/observability checks every query against a
real Prometheus scraping the real processes.
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNBOOKS = "https://github.com/cryptoviz/cryptoviz/blob/main/docs/runbooks.md"
DS = {"type": "prometheus", "uid": "${datasource}"}
# Worker series are selected by target labels: `namespace` (Kubernetes service discovery) and `pipeline`
# (relabelled from the pod label cryptoviz.io/pipeline); the workers do not label their own samples by pipeline.
SEL = 'namespace=~"$namespace", pipeline=~"$pipeline"'
# The operator's per-pipeline gauge carries the pipeline's namespace in `namespace`; scraped without honorLabels
# it becomes `exported_namespace` (the target's namespace is the operator's). This works either way.
READY = 'label_replace(cryptoviz_operator_pipeline_ready{%s}, "namespace", "$1", "exported_namespace", "(.+)")'


# --------------------------------------------------------------------------------------------------- dashboards

class Board:
    def __init__(self, uid, title, description):
        self.uid, self.title, self.description = uid, title, description
        self.panels, self.next_id, self.y, self.x, self.row_h = [], 1, 0, 0, 0

    def row(self, title):
        if self.x:
            self.y += self.row_h
            self.x, self.row_h = 0, 0
        self.panels.append({"id": self._id(), "type": "row", "title": title, "collapsed": False, "panels": [],
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}})
        self.y += 1

    def _id(self):
        i = self.next_id
        self.next_id += 1
        return i

    def panel(self, title, description, targets, unit="short", kind="timeseries", w=8, h=8, thresholds=None,
              mappings=None):
        if self.x + w > 24:
            self.y += self.row_h
            self.x, self.row_h = 0, 0
        refs = "ABCDEFGH"
        defaults = {"unit": unit}
        if thresholds:
            defaults["thresholds"] = {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in thresholds]}
            defaults["color"] = {"mode": "thresholds"}
        if mappings:
            defaults["mappings"] = mappings
        p = {
            "id": self._id(), "type": kind, "title": title, "description": description, "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "targets": [
                {"refId": refs[i], "datasource": DS, "expr": expr, "legendFormat": legend,
                 "range": kind == "timeseries", "instant": kind != "timeseries", "editorMode": "code"}
                for i, (expr, legend) in enumerate(targets)
            ],
        }
        if kind == "timeseries":
            p["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                            "tooltip": {"mode": "multi", "sort": "desc"}}
            defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
        elif kind == "stat":
            p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                            "colorMode": "background", "graphMode": "none", "textMode": "value_and_name"}
        self.panels.append(p)
        self.x += w
        self.row_h = max(self.row_h, h)

    def json(self, variables):
        return {
            "title": self.title, "uid": self.uid, "description": self.description,
            "tags": ["cryptoviz"], "timezone": "browser", "editable": True, "graphTooltip": 1,
            "schemaVersion": 39, "version": 1, "refresh": "30s", "time": {"from": "now-1h", "to": "now"},
            "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
            "annotations": {"list": [{
                "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
                "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
            "links": [{"type": "dashboards", "tags": ["cryptoviz"], "asDropdown": True, "includeVars": True,
                       "keepTime": True, "title": "CryptoViz", "icon": "external link", "targetBlank": False,
                       "tooltip": "", "url": ""}],
            "templating": {"list": variables},
            "panels": self.panels,
        }


def datasource_var():
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1, "regex": ""}


def query_var(name, label, query, multi=True):
    v = {"name": name, "label": label, "type": "query", "datasource": DS, "definition": query,
         "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
         "refresh": 2, "sort": 1, "hide": 0, "regex": "", "current": {}, "options": [],
         "includeAll": multi, "multi": multi}
    if multi:
        v["allValue"] = ".*"
    return v


NS_VAR = query_var("namespace", "Namespace", 'label_values(up{pipeline!=""}, namespace)')


def rate(metric, by, extra="", fn="rate"):
    sel = SEL + (", " + extra if extra else "")
    return f"sum by ({by}) ({fn}({metric}{{{sel}}}[$__rate_interval]))"


def quantile(q, metric, by):
    by = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{{{SEL}}}[$__rate_interval])))"


UP_MAP = [{"type": "value", "options": {"0": {"text": "down", "color": "red"}, "1": {"text": "up", "color": "green"}}}]
READY_MAP = [{"type": "value", "options": {"0": {"text": "not ready", "color": "red"},
                                           "1": {"text": "ready", "color": "green"}}}]


def pipelines_board():
    b = Board("cryptoviz-pipelines", "CryptoViz / Pipelines",
              "Every CryptoPipeline: ingest, storage and live delivery. Select one pipeline in CryptoViz / Pipeline.")
    b.row("Ingest (scraper)")
    b.panel("Ingest rate by source", "Messages parsed from each market data source per second, before dedup.",
            [(rate("cryptoviz_scraper_messages_received_total", "pipeline, source"), "{{pipeline}} {{source}}")],
            unit="ops")
    b.panel("Source up", "1 while the source delivers. A source down for 5 minutes fires CryptoVizSourceDown.",
            [(f"min by (pipeline, source) (cryptoviz_scraper_source_up{{{SEL}}})", "{{pipeline}} {{source}}")],
            kind="stat", thresholds=[(None, "red"), (1, "green")], mappings=UP_MAP)
    b.panel("Age of the last message", "Seconds since each source last delivered a payload.",
            [(f"time() - max by (pipeline, source) (cryptoviz_scraper_last_message_timestamp_seconds{{{SEL}}})",
              "{{pipeline}} {{source}}")], unit="s")
    b.panel("Produced to Kafka", "Records handed to the producer, by topic role (raw, stream).",
            [(rate("cryptoviz_scraper_messages_produced_total", "pipeline, role"), "{{pipeline}} {{role}}")],
            unit="ops")
    b.panel("Produce errors and drops",
            "Records Kafka failed to deliver (by librdkafka error) and messages dropped before Kafka (by reason).",
            [(rate("cryptoviz_scraper_producer_delivery_errors_total", "pipeline, error"), "{{pipeline}} {{error}}"),
             (rate("cryptoviz_scraper_messages_dropped_total", "pipeline, source, reason"),
              "{{pipeline}} dropped {{source}} {{reason}}")], unit="ops")
    b.panel("Kafka ack latency p99", "Publish to broker acknowledgement, 99th percentile.",
            [(quantile(0.99, "cryptoviz_scraper_producer_ack_latency_seconds", "pipeline"), "{{pipeline}}")],
            unit="s")
    b.row("Storage (consumer)")
    b.panel("Rows written by table", "Rows inserted per second (re-deliveries not counted).",
            [(rate("cryptoviz_consumer_rows_written_total", "pipeline, table"), "{{pipeline}} {{table}}")],
            unit="rowsps")
    b.panel("Consumer lag", "Messages behind the head of the raw topic, summed over partitions.",
            [(f"sum by (pipeline) (cryptoviz_consumer_lag_messages{{{SEL}}})", "{{pipeline}}")])
    b.panel("Consumer lag in time (estimate)",
            "Lag divided by the rows stored per second: how long the backlog takes to drain at the current pace.",
            [(f"sum by (pipeline) (cryptoviz_consumer_lag_messages{{{SEL}}}) / clamp_min(sum by (pipeline) "
              f"(rate(cryptoviz_consumer_rows_written_total{{{SEL}}}[$__rate_interval]) + "
              f"rate(cryptoviz_consumer_rows_duplicate_total{{{SEL}}}[$__rate_interval])), 0.01)", "{{pipeline}}")],
            unit="s")
    b.panel("Flush latency p99", "One batch: database transaction, dead letters and offset commit.",
            [(quantile(0.99, "cryptoviz_consumer_flush_duration_seconds", "pipeline"), "{{pipeline}}")], unit="s")
    b.panel("Dead letters", "Messages sent to the dead-letter topic per second, by reason.",
            [(rate("cryptoviz_consumer_dlq_messages_total", "pipeline, reason"), "{{pipeline}} {{reason}}")],
            unit="ops")
    b.panel("End-to-end latency to the database", "Kafka record timestamp to database commit, p50 and p99.",
            [(quantile(0.5, "cryptoviz_consumer_end_to_end_latency_seconds", "pipeline"), "{{pipeline}} p50"),
             (quantile(0.99, "cryptoviz_consumer_end_to_end_latency_seconds", "pipeline"), "{{pipeline}} p99")],
            unit="s")
    b.row("Live delivery (gateway)")
    b.panel("SSE clients", "Connected Server-Sent Events clients.",
            [(f"sum by (pipeline) (cryptoviz_gateway_clients{{{SEL}}})", "{{pipeline}}")])
    b.panel("Deliveries", "Events read from the stream topic, and handed to client connections (one per client).",
            [(rate("cryptoviz_gateway_events_received_total", "pipeline"), "{{pipeline}} received"),
             (rate("cryptoviz_gateway_deliveries_total", "pipeline"), "{{pipeline}} delivered")], unit="ops")
    b.panel("Drops and refusals", "Clients disconnected (slow) and connections refused (max clients, auth).",
            [(rate("cryptoviz_gateway_clients_dropped_total", "pipeline, reason"), "{{pipeline}} dropped {{reason}}"),
             (rate("cryptoviz_gateway_rejected_total", "pipeline, reason"), "{{pipeline}} refused {{reason}}")],
            unit="ops")
    b.panel("End-to-end latency to clients", "Kafka record timestamp to hand-off to the client connection.",
            [(quantile(0.5, "cryptoviz_gateway_latency_seconds", "pipeline"), "{{pipeline}} p50"),
             (quantile(0.99, "cryptoviz_gateway_latency_seconds", "pipeline"), "{{pipeline}} p99")], unit="s")
    return b.json([datasource_var(), NS_VAR,
                   query_var("pipeline", "Pipeline", 'label_values(up{namespace=~"$namespace", pipeline!=""}, pipeline)')])


def pipeline_board():
    b = Board("cryptoviz-pipeline", "CryptoViz / Pipeline",
              "One CryptoPipeline in detail: readiness, each worker instance, partitions and reasons.")
    b.row("Status")
    b.panel("Ready", "The pipeline's Ready condition as the operator reports it.",
            [(f'max by (namespace, pipeline) ({READY % SEL.replace("namespace=~", "exported_namespace=~")})'
              f' or max by (namespace, pipeline) ({READY % (SEL + ", exported_namespace=" + chr(34) * 2)})',
              "{{namespace}}/{{pipeline}}")],
            kind="stat", w=6, h=4, thresholds=[(None, "red"), (1, "green")], mappings=READY_MAP)
    b.panel("Targets up", "Worker /metrics endpoints Prometheus scrapes successfully.",
            [(f"sum(up{{{SEL}}})", "up"), (f"count(up{{{SEL}}})", "targets")], kind="stat", w=6, h=4)
    b.panel("Sources up", "Sources delivering, over sources configured.",
            [(f"sum(cryptoviz_scraper_source_up{{{SEL}}})", "up"),
             (f"count(cryptoviz_scraper_source_up{{{SEL}}})", "sources")], kind="stat", w=6, h=4)
    b.panel("SSE clients", "Connected clients over every gateway replica.",
            [(f"sum(cryptoviz_gateway_clients{{{SEL}}})", "clients")], kind="stat", w=6, h=4)
    b.row("Scraper")
    b.panel("Payloads by instance and source", "Frames or response bodies received per second.",
            [(rate("cryptoviz_scraper_payloads_received_total", "instance, source"), "{{instance}} {{source}}")],
            unit="ops")
    b.panel("Last message age by instance", "Seconds since each source last delivered, per scraper instance.",
            [(f"time() - max by (instance, source) (cryptoviz_scraper_last_message_timestamp_seconds{{{SEL}}})",
              "{{instance}} {{source}}")], unit="s")
    b.panel("Producer queue depth", "Records buffered, not yet acknowledged by Kafka.",
            [(f"max by (instance) (cryptoviz_scraper_producer_queue_depth{{{SEL}}})", "{{instance}}")])
    b.panel("Acknowledged by Kafka", "Records the broker acknowledged per second.",
            [(rate("cryptoviz_scraper_producer_acked_total", "instance"), "{{instance}}")], unit="ops")
    b.panel("Dropped by reason", "Messages lost before Kafka, by source and reason.",
            [(rate("cryptoviz_scraper_messages_dropped_total", "instance, source, reason"),
              "{{instance}} {{source}} {{reason}}")], unit="ops")
    b.panel("Delivery errors by error", "Records Kafka failed to deliver, by librdkafka error.",
            [(rate("cryptoviz_scraper_producer_delivery_errors_total", "instance, error"), "{{instance}} {{error}}")],
            unit="ops")
    b.row("Consumer")
    b.panel("Rows by table", "Rows inserted and re-delivered duplicates skipped, per second.",
            [(rate("cryptoviz_consumer_rows_written_total", "table"), "written {{table}}"),
             (rate("cryptoviz_consumer_rows_duplicate_total", "table"), "duplicate {{table}}")], unit="rowsps")
    b.panel("Lag by partition", "Messages behind the head of each raw-topic partition.",
            [(f"max by (partition) (cryptoviz_consumer_lag_messages{{{SEL}}})", "partition {{partition}}")])
    b.panel("Batch size", "Kafka records per flushed batch, p50 and p99.",
            [(quantile(0.5, "cryptoviz_consumer_batch_size_records", ""), "p50"),
             (quantile(0.99, "cryptoviz_consumer_batch_size_records", ""), "p99")])
    b.panel("Flush latency", "One batch flush, p50 and p99.",
            [(quantile(0.5, "cryptoviz_consumer_flush_duration_seconds", ""), "p50"),
             (quantile(0.99, "cryptoviz_consumer_flush_duration_seconds", ""), "p99")], unit="s")
    b.panel("Dead letters by reason", "Messages sent to the dead-letter topic per second.",
            [(rate("cryptoviz_consumer_dlq_messages_total", "reason"), "{{reason}}")], unit="ops")
    b.panel("Paused", "1 while consumption is paused because the database is failing.",
            [(f"max by (instance) (cryptoviz_consumer_paused{{{SEL}}})", "{{instance}}")])
    b.row("Gateway")
    b.panel("Clients by instance", "Connected SSE clients per gateway replica.",
            [(f"sum by (instance) (cryptoviz_gateway_clients{{{SEL}}})", "{{instance}}")])
    b.panel("Deliveries by instance", "Events handed to client connections per second.",
            [(rate("cryptoviz_gateway_deliveries_total", "instance"), "{{instance}}")], unit="ops")
    b.panel("Drops and refusals by reason", "Clients disconnected and connections refused.",
            [(rate("cryptoviz_gateway_clients_dropped_total", "reason"), "dropped {{reason}}"),
             (rate("cryptoviz_gateway_rejected_total", "reason"), "refused {{reason}}")], unit="ops")
    b.panel("Latency to clients", "Kafka record timestamp to hand-off, p50 and p99.",
            [(quantile(0.5, "cryptoviz_gateway_latency_seconds", ""), "p50"),
             (quantile(0.99, "cryptoviz_gateway_latency_seconds", ""), "p99")], unit="s")
    return b.json([datasource_var(), NS_VAR,
                   query_var("pipeline", "Pipeline", 'label_values(up{namespace=~"$namespace", pipeline!=""}, pipeline)',
                             multi=False)])


def operator_board():
    b = Board("cryptoviz-operator", "CryptoViz / Operator",
              "The cryptoviz-operator: reconciliations, errors, Kubernetes writes, Kafka admin and database calls.")
    op = 'namespace=~"$namespace"'

    def orate(metric, by, extra=""):
        sel = op + (", " + extra if extra else "")
        return f"sum by ({by}) (rate({metric}{{{sel}}}[$__rate_interval]))"

    b.row("Reconciliation")
    b.panel("Reconciliations by result", "Reconciliations of CryptoPipelines per second, ok or error.",
            [(orate("cryptoviz_operator_reconciliations_total", "result"), "{{result}}")], unit="ops")
    b.panel("Reconcile errors by reason", "Failed reconciliations per second by reason (kube_api, invalid_spec, "
            "cleanup). Sustained errors fire CryptoVizReconcileErrors.",
            [(orate("cryptoviz_operator_reconcile_errors_total", "reason"), "{{reason}}")], unit="ops")
    b.panel("Reconcile duration", "Time spent in one reconciliation, p50 and p99.",
            [(f"histogram_quantile({q}, sum by (le) (rate(cryptoviz_operator_reconcile_duration_seconds_bucket"
              f"{{{op}}}[$__rate_interval])))", f"p{int(q * 100)}") for q in (0.5, 0.99)], unit="s")
    b.panel("Pipelines managed", "CryptoPipelines each replica manages, and whether it holds the leader lease.",
            [(f"sum by (instance) (cryptoviz_operator_pipelines{{{op}}})", "{{instance}} pipelines"),
             (f"max by (instance) (cryptoviz_operator_leader{{{op}}})", "{{instance}} leader")])
    ready_sel = op + ', pipeline=~"$pipeline"'
    b.panel("Pipeline readiness", "1 when a pipeline's Ready condition is True (per pipeline namespace).",
            [(f"max by (namespace, pipeline) ({READY % ready_sel})", "{{namespace}}/{{pipeline}}")], kind="stat", thresholds=[(None, "red"), (1, "green")],
            mappings=READY_MAP)
    b.panel("Topic drift and refused changes", "Topic configs corrected, and destructive changes refused.",
            [(f"sum(increase(cryptoviz_operator_topic_drift_corrections_total{{{op}}}[$__rate_interval]))",
              "drift corrected"),
             (f"sum(increase(cryptoviz_operator_refused_changes_total{{{op}}}[$__rate_interval]))", "refused")])
    b.row("Calls")
    b.panel("Kafka admin calls", "Calls to the Kafka admin API by operation and outcome.",
            [(orate("cryptoviz_operator_external_calls_total", "operation, outcome", 'system="kafka"'),
              "{{operation}} {{outcome}}")], unit="ops")
    b.panel("Database calls", "Calls to TimescaleDB/PostgreSQL by operation and outcome.",
            [(orate("cryptoviz_operator_external_calls_total", "operation, outcome", 'system="database"'),
              "{{operation}} {{outcome}}")], unit="ops")
    b.panel("Kubernetes API writes", "Writes by kind and verb. A resync with nothing changed writes nothing.",
            [(orate("cryptoviz_operator_api_writes_total", "kind, verb"), "{{verb}} {{kind}}")], unit="ops")
    return b.json([datasource_var(),
                   query_var("namespace", "Operator namespace", "label_values(cryptoviz_operator_leader, namespace)"),
                   query_var("pipeline", "Pipeline", "label_values(cryptoviz_operator_pipeline_ready, pipeline)")])


# -------------------------------------------------------------------------------------------------------- alerts

# Each alert: name, for, severity, expr, summary, description (templates may use {{ $labels.x }} only, so the
# promtool fixtures can render them), runbook anchor, and a promtool case: input series (1m steps), the time it
# fires with its labels, and the time it has resolved.
ALERTS = [
    # ---- pipelines
    dict(group="cryptoviz-pipelines", alert="CryptoVizSourceDown", severity="warning", for_="5m",
         expr="max by (namespace, pipeline, source) (cryptoviz_scraper_source_up) == 0",
         summary="Source {{ $labels.source }} of pipeline {{ $labels.namespace }}/{{ $labels.pipeline }} is down",
         description="The scraper has received nothing from {{ $labels.source }} for 5 minutes: the exchange is "
                     "unreachable, refuses the API key or the connection keeps failing.",
         case=dict(series=[('cryptoviz_scraper_source_up{namespace="ns",pipeline="p",source="kraken",instance="a"}',
                            "1 1 0x10 1x10")],
                   fire=("10m", dict(namespace="ns", pipeline="p", source="kraken")), resolve="18m")),
    dict(group="cryptoviz-pipelines", alert="CryptoVizNoData", severity="warning", for_="1m",
         expr="time() - max by (namespace, pipeline, source) (cryptoviz_scraper_last_message_timestamp_seconds) > 600",
         summary="No data from {{ $labels.source }} in {{ $labels.namespace }}/{{ $labels.pipeline }} for 10 minutes",
         description="The last payload from {{ $labels.source }} is more than 10 minutes old, though the scraper "
                     "is running.",
         # The timestamp stops at 60 (second 60) and resumes at minute 20 (1200 s, then +60 per step).
         case=dict(series=[('cryptoviz_scraper_last_message_timestamp_seconds{namespace="ns",pipeline="p",'
                            'source="synthetic",instance="a"}', "0 60x19 1200+60x10")],
                   fire=("13m", dict(namespace="ns", pipeline="p", source="synthetic")), resolve="21m")),
    dict(group="cryptoviz-pipelines", alert="CryptoVizConsumerLagGrowing", severity="warning", for_="10m",
         expr="(\n  sum by (namespace, pipeline) (cryptoviz_consumer_lag_messages)\n"
              "  / clamp_min(sum by (namespace, pipeline) (rate(cryptoviz_consumer_rows_written_total[5m])"
              " + rate(cryptoviz_consumer_rows_duplicate_total[5m])), 0.01)\n) > 60\n"
              "and\nsum by (namespace, pipeline) (delta(cryptoviz_consumer_lag_messages[10m])) > 0",
         summary="Consumer of {{ $labels.namespace }}/{{ $labels.pipeline }} is falling behind",
         description="The raw topic backlog would take more than a minute to drain at the current write rate, and "
                     "it has grown for 10 minutes: rows reach the database later and later.",
         case=dict(series=[('cryptoviz_consumer_lag_messages{namespace="ns",pipeline="p",partition="0",instance="a"}',
                            "0+100x30 0x20"),
                           ('cryptoviz_consumer_rows_written_total{namespace="ns",pipeline="p",table="ticks",'
                            'instance="a"}', "0+60x50"),
                           ('cryptoviz_consumer_rows_duplicate_total{namespace="ns",pipeline="p",table="ticks",'
                            'instance="a"}', "0x50")],
                   fire=("25m", dict(namespace="ns", pipeline="p")), resolve="40m")),
    dict(group="cryptoviz-pipelines", alert="CryptoVizDeadLettersGrowing", severity="warning", for_="15m",
         expr="sum by (namespace, pipeline, reason) (rate(cryptoviz_consumer_dlq_messages_total[5m])) > 0",
         summary="Dead letters keep arriving in {{ $labels.namespace }}/{{ $labels.pipeline }} ({{ $labels.reason }})",
         description="The consumer has sent messages to the dead-letter topic for 15 minutes without a break, "
                     "reason {{ $labels.reason }}: those messages are not stored.",
         case=dict(series=[('cryptoviz_consumer_dlq_messages_total{namespace="ns",pipeline="p",reason="invalid_json",'
                            'instance="a"}', "0+10x30 300x20")],
                   fire=("25m", dict(namespace="ns", pipeline="p", reason="invalid_json")), resolve="40m")),
    dict(group="cryptoviz-pipelines", alert="CryptoVizSSEDropRate", severity="warning", for_="10m",
         expr="sum by (namespace, pipeline) (increase(cryptoviz_gateway_clients_dropped_total[10m]))\n"
              "/ clamp_min(sum by (namespace, pipeline) (max_over_time(cryptoviz_gateway_clients[10m])), 1)\n> 0.05",
         summary="The gateway of {{ $labels.namespace }}/{{ $labels.pipeline }} drops many SSE clients",
         description="More than 5% of the connected clients were disconnected as too slow in the last 10 minutes, "
                     "for 10 minutes.",
         case=dict(series=[('cryptoviz_gateway_clients_dropped_total{namespace="ns",pipeline="p",reason="slow",'
                            'instance="a"}', "0+2x30 60x30"),
                           ('cryptoviz_gateway_clients{namespace="ns",pipeline="p",instance="a"}', "100x60")],
                   fire=("25m", dict(namespace="ns", pipeline="p")), resolve="45m")),
    dict(group="cryptoviz-pipelines", alert="CryptoVizProduceErrors", severity="warning", for_="10m",
         expr="sum by (namespace, pipeline) (rate(cryptoviz_scraper_producer_delivery_errors_total[5m])) > 0\n"
              "or\nsum by (namespace, pipeline) (rate(cryptoviz_scraper_messages_dropped_total[5m])) > 0",
         summary="Market data of {{ $labels.namespace }}/{{ $labels.pipeline }} is not reaching Kafka",
         description="For 10 minutes the scraper has failed to deliver records to Kafka or dropped messages before "
                     "Kafka (producer buffer full): those messages are lost.",
         case=dict(series=[('cryptoviz_scraper_producer_delivery_errors_total{namespace="ns",pipeline="p",'
                            'error="MessageTimedOut",instance="a"}', "0+5x20 100x20")],
                   fire=("18m", dict(namespace="ns", pipeline="p")), resolve="30m")),
    dict(group="cryptoviz-pipelines", alert="CryptoVizConsumerPaused", severity="critical", for_="5m",
         expr="max by (namespace, pipeline) (cryptoviz_consumer_paused) == 1",
         summary="Consumer of {{ $labels.namespace }}/{{ $labels.pipeline }} is paused: the database is failing",
         description="The consumer stopped reading because database writes fail; nothing is stored until the "
                     "database recovers (Kafka keeps the backlog).",
         case=dict(series=[('cryptoviz_consumer_paused{namespace="ns",pipeline="p",instance="a"}', "0 1x10 0x5")],
                   fire=("8m", dict(namespace="ns", pipeline="p")), resolve="13m")),
    dict(group="cryptoviz-pipelines", alert="CryptoVizWorkerDown", severity="warning", for_="5m",
         expr='up{pipeline!=""} == 0',
         summary="Worker {{ $labels.instance }} of {{ $labels.namespace }}/{{ $labels.pipeline }} cannot be scraped",
         description="Prometheus has failed to scrape {{ $labels.instance }} for 5 minutes: the pod is down, "
                     "restarting or not serving /metrics.",
         case=dict(series=[('up{namespace="ns",pipeline="p",instance="10.0.0.1:8080",job="ns/p-workers"}',
                            "1 0x10 1x5")],
                   fire=("8m", dict(namespace="ns", pipeline="p", instance="10.0.0.1:8080", job="ns/p-workers")),
                   resolve="13m")),
    # ---- operator
    dict(group="cryptoviz-operator", alert="CryptoVizReconcileErrors", severity="warning", for_="15m",
         expr="sum by (namespace, reason) (rate(cryptoviz_operator_reconcile_errors_total[5m])) > 0",
         summary="The CryptoViz operator in {{ $labels.namespace }} keeps failing to reconcile ({{ $labels.reason }})",
         description="Reconciliations have failed with reason {{ $labels.reason }} for 15 minutes; pipelines are not "
                     "converging to their spec.",
         case=dict(series=[('cryptoviz_operator_reconcile_errors_total{namespace="cryptoviz-system",reason="kube_api",'
                            'instance="a"}', "0+1x30 30x20")],
                   fire=("25m", dict(namespace="cryptoviz-system", reason="kube_api")), resolve="40m")),
    # As cert-manager ships it: every other operator alert goes silent when no operator runs, so its absence
    # is an alert of its own. `job` is the Service's app.kubernetes.io/name (the chart's ServiceMonitor sets
    # jobLabel), so it does not depend on the release name.
    dict(group="cryptoviz-operator", alert="CryptoVizOperatorAbsent", severity="critical", for_="10m",
         expr='absent(up{job="cryptoviz-operator"} == 1)',
         summary="No CryptoViz operator replica has been scraped for 10 minutes",
         description="Prometheus has no up sample equal to 1 for job cryptoviz-operator: the operator is not "
                     "running, not scraped, or every replica fails. Nothing reconciles pipelines and "
                     "CryptoVizPipelineNotReady cannot fire.",
         case=dict(series=[('up{namespace="cryptoviz-system",job="cryptoviz-operator",instance="10.0.0.2:8080"}',
                            "1 0x15 1x5")],
                   fire=("13m", dict()), resolve="18m")),  # absent() of a comparison has no labels
    dict(group="cryptoviz-operator", alert="CryptoVizPipelineNotReady", severity="warning", for_="10m",
         expr='max by (namespace, pipeline) (label_replace(cryptoviz_operator_pipeline_ready, '
              '"namespace", "$1", "exported_namespace", "(.+)")) == 0',
         summary="Pipeline {{ $labels.namespace }}/{{ $labels.pipeline }} has not been Ready for 10 minutes",
         description="The pipeline's Ready condition has been False for 10 minutes; its status conditions say which "
                     "part (topics, storage, a worker) is failing.",
         case=dict(series=[('cryptoviz_operator_pipeline_ready{namespace="cryptoviz-system",'
                            'exported_namespace="markets",pipeline="btc",instance="a"}', "1 0x15 1x5")],
                   fire=("13m", dict(namespace="markets", pipeline="btc")), resolve="18m")),
]


def anchor(name):
    return name.lower()


def rule(a):
    return {"alert": a["alert"], "expr": a["expr"], "for": a["for_"],
            "labels": {"severity": a["severity"]},
            "annotations": {"summary": a["summary"], "description": a["description"],
                            "runbook_url": f"{RUNBOOKS}#{anchor(a['alert'])}"}}


def groups():
    out = []
    for g in dict.fromkeys(a["group"] for a in ALERTS):
        out.append({"name": g, "rules": [rule(a) for a in ALERTS if a["group"] == g]})
    return out


def render(template, labels):
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], template)


def fixtures():
    tests = []
    for a in ALERTS:
        c = a["case"]
        at, labels = c["fire"]
        r = rule(a)
        ann = {k: render(v, labels) for k, v in r["annotations"].items()}
        tests.append({
            "name": a["alert"],
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in c["series"]],
            "alert_rule_test": [
                {"eval_time": at, "alertname": a["alert"],
                 "exp_alerts": [{"exp_labels": {"severity": a["severity"], **labels}, "exp_annotations": ann}]},
                {"eval_time": c["resolve"], "alertname": a["alert"], "exp_alerts": []},
            ],
        })
    return {"rule_files": ["../alerts.rules.yaml"], "evaluation_interval": "1m", "tests": tests}


# ---------------------------------------------------------------------------------------------------------- YAML

PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_./-]*$")
RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def scalar(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if PLAIN.match(v) and v.lower() not in RESERVED:
        return v
    return json.dumps(v, ensure_ascii=False)


def yaml(v, indent=0):
    pad = " " * indent
    lines = []
    if isinstance(v, dict):
        for k, x in v.items():
            if isinstance(x, str) and "\n" in x:
                lines.append(f"{pad}{k}: |-")
                lines.extend(f"{pad}  {l}" if l else "" for l in x.split("\n"))
            elif isinstance(x, (dict, list)) and x:
                lines.append(f"{pad}{k}:")
                lines.extend(yaml(x, indent + 2 if isinstance(x, dict) else indent))
            elif isinstance(x, (dict, list)):
                lines.append(f"{pad}{k}: {'{}' if isinstance(x, dict) else '[]'}")
            else:
                lines.append(f"{pad}{k}: {scalar(x)}")
    else:
        for x in v:
            if isinstance(x, dict) and x:
                sub = yaml(x, indent + 2)
                lines.append(f"{pad}- {sub[0][indent + 2:]}")
                lines.extend(sub[1:])
            else:
                lines.append(f"{pad}- {scalar(x)}")
    return lines


HEADER = "# Generated by dashboards/gen/generate.py; do not edit.\n"


def outputs():
    def js(d):
        return json.dumps(d, indent=2, ensure_ascii=False) + "\n"

    prule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
             "metadata": {"name": "cryptoviz", "labels": {"app.kubernetes.io/name": "cryptoviz",
                                                          "app.kubernetes.io/part-of": "cryptoviz"}},
             "spec": {"groups": groups()}}
    return {
        "dashboards/cryptoviz-pipelines.json": js(pipelines_board()),
        "dashboards/cryptoviz-pipeline.json": js(pipeline_board()),
        "dashboards/cryptoviz-operator.json": js(operator_board()),
        "dashboards/alerts.rules.yaml": HEADER + "\n".join(yaml({"groups": groups()})) + "\n",
        "dashboards/prometheusrule.yaml": HEADER + "\n".join(yaml(prule)) + "\n",
        "dashboards/tests/alerts_test.yml": HEADER + "\n".join(yaml(fixtures())) + "\n",
    }


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for rel, text in outputs().items():
        path = ROOT / rel
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(rel)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print("out of date (run dashboards/gen/generate.py, then charts/sync-assets): " + ", ".join(stale))
        sys.exit(1)


if __name__ == "__main__":
    main()
