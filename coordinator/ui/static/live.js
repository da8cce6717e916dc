// fedge dashboard: live updates without a full reload. Every element with a
// data-fragment="NAME" attribute is refreshed every 2 s with the HTML fragment
// /ui/fragments/NAME (same query string as the page, so a table keeps its page).
// A session that ended (the fragment answers with the login page) reloads the page.
(function () {
  "use strict";
  var PERIOD_MS = 2000;

  function refresh(element) {
    var name = element.getAttribute("data-fragment");
    var url = "/ui/fragments/" + encodeURIComponent(name) + window.location.search;
    return fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.redirected || response.status === 401 || response.status === 403) {
          window.location.reload();
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== element.getAttribute("data-last")) {
          element.innerHTML = html;
          element.setAttribute("data-last", html);
        }
      })
      .catch(function () {
        // The coordinator may be restarting: try again next period.
      });
  }

  function tick() {
    var elements = document.querySelectorAll("[data-fragment]");
    var pending = [];
    for (var i = 0; i < elements.length; i++) {
      pending.push(refresh(elements[i]));
    }
    Promise.all(pending).then(function () {
      window.setTimeout(tick, PERIOD_MS);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (document.querySelector("[data-fragment]")) {
      window.setTimeout(tick, PERIOD_MS);
    }
  });
})();
