// Live updates: the page names its event stream in <body data-live="...">; on "update" the
// page fetches itself again and swaps <main>. No inline script, nothing from elsewhere.
"use strict";
(function () {
  var url = document.body.getAttribute("data-live");
  if (!url || !window.EventSource) { return; }
  var busy = false;
  function refresh() {
    if (busy) { return; }
    var active = document.activeElement;
    if (active && active.tagName === "INPUT" && active.value) { return; } // typing a note
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", redirect: "manual" })
      .then(function (r) {
        if (r.type === "opaqueredirect" || r.status !== 200) { window.location.reload(); return null; }
        return r.text();
      })
      .then(function (html) {
        if (html === null) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("main");
        if (fresh) { document.getElementById("main").replaceWith(fresh); }
        document.body.setAttribute("data-updated", String(Date.now()));
      })
      .finally(function () { busy = false; });
  }
  var es = new EventSource(url);
  es.addEventListener("update", refresh);
  es.addEventListener("end", function () { es.close(); window.location.reload(); });
})();
