// OmniQ dashboard: one EventSource per page on /events; a "tasks" message that concerns this
// page makes it fetch itself again (only its live region, X-OmniQ-Partial) and swap it in. At
// most one fetch runs at a time; messages arriving meanwhile cost one more fetch, not one each.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  var base = document.body.dataset.base || "";
  var watch = live.dataset.watch || "none";
  var state = document.getElementById("live-state");
  var banner = document.getElementById("storage-banner");
  var busy = false, again = false;

  function say(text) { if (state) state.textContent = text; }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, {headers: {"X-OmniQ-Partial": "1"}, credentials: "same-origin", cache: "no-store"})
      .then(function (r) { return r.text().then(function (t) { return [r, t]; }); })
      .then(function (rt) {
        var r = rt[0], text = rt[1];
        if (r.ok || r.status === 503) {
          live.innerHTML = text;
          document.body.dataset.refreshed = String(Date.now());
        }
      })
      .catch(function () { say("offline"); })
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  var queue = live.dataset.queue || "";

  function concerns(msg) {
    // a list filtered by queue ignores events that name only other queues
    if (queue && msg.queues.length && msg.queues.indexOf(queue) < 0 && !msg.many) return false;
    if (watch === "all") return true;
    if (watch.indexOf("task:") === 0) return msg.many || msg.ids.indexOf(watch.slice(5)) >= 0;
    return false;
  }

  // a page whose browser keeps no cookie of ours (a notebook's IFrame) carries the token itself
  var token = document.body.dataset.token;
  var source = new EventSource(base + "/events?watch=" + encodeURIComponent(watch) +
                               (token ? "&token=" + encodeURIComponent(token) : ""));
  source.onopen = function () { say("live"); };
  source.onerror = function () { say("reconnecting…"); };
  source.addEventListener("tasks", function (e) {
    var msg = JSON.parse(e.data);
    if (concerns(msg)) refresh();
  });
  source.addEventListener("overview", function () {
    if (watch === "overview") refresh();
  });
  source.addEventListener("storage", function (e) {
    var msg = JSON.parse(e.data);
    if (banner) {
      banner.hidden = msg.ok;
      var urls = banner.querySelector(".urls");
      if (urls) urls.textContent = msg.down.map(function (d) { return d.url; }).join(", ");
    }
    if (msg.recovered && watch !== "none") refresh();
  });
})();
