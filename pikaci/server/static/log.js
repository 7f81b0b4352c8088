// Live tail of a running job's log: appends what the log gained since the page was rendered.
(function () {
  "use strict";
  var log = document.getElementById("log");
  if (!log || log.dataset.live !== "1") return;
  var state = document.getElementById("live-state");
  var offset = Number(log.dataset.nextOffset);
  var url = log.dataset.tailUrl;
  var maxChunks = 400; // keeps the page's memory bounded on a chatty job

  function atBottom() {
    return window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
  }

  function show(text) {
    if (state) state.textContent = text;
  }

  function poll() {
    fetch(url + "&offset=" + offset, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (chunk) {
        var follow = atBottom();
        if (chunk.html) {
          var part = document.createElement("span");
          part.className = "tail-chunk";
          part.innerHTML = chunk.html; // rendered and escaped by the server
          log.appendChild(part);
          while (log.querySelectorAll(".tail-chunk").length > maxChunks) {
            log.removeChild(log.querySelector(".tail-chunk"));
          }
          if (follow) window.scrollTo(0, document.body.scrollHeight);
        }
        offset = chunk.next_offset;
        if (!chunk.eof) {
          setTimeout(poll, 0);
        } else if (chunk.running) {
          setTimeout(poll, 1000);
        } else {
          show("finished");
        }
      })
      .catch(function (error) {
        show("tail stopped: " + error.message);
      });
  }

  poll();
})();
