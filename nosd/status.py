"""The status page at ``/``: a static shell whose script polls ``/nosd/status`` (JSON) every second.

The shell holds no data, so it is served without a token; the JSON it fetches needs one when the daemon has
``--auth-token`` (give it in the page's fragment, ``/#token=...``, which browsers never send to the server).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nosd import __version__

if TYPE_CHECKING:
    from nosd.manager import ModelManager
    from nosd.metrics import Metrics


def snapshot(manager: ModelManager, metrics: Metrics, shm_regions: int) -> dict[str, Any]:
    models = []
    for model_id, m in manager.models.items():
        if m.state == "unloaded":
            continue
        models.append(
            {
                "name": model_id,
                "state": m.state,
                "replicas": len(m.replicas),
                "memory_bytes": m.memory_bytes,
                "queue_depth": m.batcher.queued_requests if m.batcher else 0,
                "inflight_batches": m.batcher.inflight if m.batcher else 0,
                "max_batch_size": m.batcher.max_batch_size if m.batcher else None,
                "samples_per_s": round(metrics.throughput(model_id), 2),
                "error": m.error,
            }
        )
    return {"version": __version__, "memory": manager.memory(), "shm_regions": shm_regions, "models": models}


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>nosd</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 2em; color: #222; }
  table { border-collapse: collapse; margin-top: 1em; }
  th, td { padding: 4px 12px; border-bottom: 1px solid #ddd; text-align: right; }
  th:first-child, td:first-child { text-align: left; }
  .ready { color: #070; } .failed { color: #a00; } .loading, .draining { color: #a60; }
  #error { color: #a00; }
</style>
</head>
<body>
<h1>nosd <span id="version"></span></h1>
<div id="memory">loading…</div>
<div id="error"></div>
<table>
  <thead><tr><th>model</th><th>state</th><th>replicas</th><th>memory MB</th><th>queue</th>
  <th>batches in flight</th><th>max batch</th><th>samples/s (10 s)</th></tr></thead>
  <tbody id="models"></tbody>
</table>
<p>Refreshed every second from <code>/nosd/status</code>. Metrics: <a href="/metrics">/metrics</a>.</p>
<script>
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const headers = token ? {Authorization: "Bearer " + token} : {};
const mb = (b) => (b / 1e6).toFixed(0);
function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
}
async function refresh() {
  try {
    const r = await fetch("/nosd/status", {headers});
    if (!r.ok) throw new Error("HTTP " + r.status + ": " + (await r.text()));
    const s = await r.json();
    document.getElementById("error").textContent = "";
    document.getElementById("version").textContent = s.version;
    const m = s.memory;
    document.getElementById("memory").textContent =
      `${m.device}: models ${mb(m.models_bytes)} MB of a ${mb(m.budget_bytes)} MB budget; ` +
      `device ${mb(m.device_used_bytes)} / ${mb(m.total_bytes)} MB in use; ${s.shm_regions} shm regions`;
    const body = document.getElementById("models");
    body.replaceChildren();
    for (const x of s.models) {
      const row = body.insertRow();
      row.dataset.model = x.name;
      cell(row, x.name);
      cell(row, x.state + (x.error ? " (" + x.error + ")" : ""), x.state);
      cell(row, x.replicas);
      cell(row, mb(x.memory_bytes));
      cell(row, x.queue_depth);
      cell(row, x.inflight_batches);
      cell(row, x.max_batch_size ?? "");
      cell(row, x.samples_per_s.toFixed(1));
    }
  } catch (e) {
    document.getElementById("error").textContent = String(e);
  }
}
refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
"""
