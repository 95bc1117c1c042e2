/* redisflow dashboard: the one script (no library, nothing from the internet).
 * Every element with data-live="URL" is refreshed with the HTML the server renders at URL
 * (escaped there), every data-every ms while the tab is visible; a select-all box ticks the
 * boxes of its form. Pages work without it, only without the live updates. */
(function () {
  "use strict";
  var badge = document.getElementById("live-status");

  function mark(ok) {
    if (!badge) return;
    badge.textContent = ok ? "live" : "reconnecting…";
    badge.className = ok ? "pill live" : "pill live stale";
  }

  function poll(el) {
    var every = parseInt(el.getAttribute("data-every") || "2000", 10);
    function again() { window.setTimeout(tick, every); }
    function tick() {
      if (document.hidden) { again(); return; }
      window.fetch(el.getAttribute("data-live"), { credentials: "same-origin", cache: "no-store" })
        .then(function (r) {
          if (!r.ok) { throw new Error("HTTP " + r.status); }
          return r.text();
        })
        .then(function (html) { el.innerHTML = html; mark(true); })
        .catch(function () { mark(false); })
        .then(again);
    }
    again();
  }

  function ready() {
    var live = document.querySelectorAll("[data-live]");
    for (var i = 0; i < live.length; i++) { poll(live[i]); }
    document.addEventListener("change", function (event) {
      var box = event.target;
      if (!box.hasAttribute || !box.hasAttribute("data-select-all") || !box.form) return;
      var boxes = box.form.querySelectorAll("input[type=checkbox][name=id]");
      for (var j = 0; j < boxes.length; j++) { boxes[j].checked = box.checked; }
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", ready);
  } else {
    ready();
  }
})();
