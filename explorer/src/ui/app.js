// The explorer dashboard's live refresh (served as /ui/app.js; no inline
// script anywhere: the pages' Content-Security-Policy forbids it).
//
// Every second: fetch the page's JSON (main[data-api]); when the answer
// differs from the last one, fetch this page again and swap its <main>.
// Relative times ([data-ts]) are recomputed every second.
(function () {
  'use strict';
  var main = document.querySelector('main[data-api]');
  var last = null;
  var busy = false;

  function span(s, pre, post) {
    if (s < 90) return pre + s + ' s' + post;
    if (s < 5400) return pre + Math.round(s / 60) + ' min' + post;
    if (s < 172800) return pre + Math.round(s / 3600) + ' h' + post;
    return pre + Math.round(s / 86400) + ' d' + post;
  }

  function tick() {
    var now = Date.now();
    var els = document.querySelectorAll('[data-ts]');
    for (var i = 0; i < els.length; i++) {
      var el = els[i];
      var s = Math.round((now - Number(el.getAttribute('data-ts'))) / 1000);
      if (el.getAttribute('data-kind') === 'until') {
        el.textContent = -s <= 0 ? 'expired' : span(-s, 'in ', '');
      } else {
        el.textContent = span(Math.max(0, s), '', ' ago');
        var limit = Number(el.getAttribute('data-stale') || 0);
        el.classList.toggle('stale', limit > 0 && s > limit);
      }
    }
  }

  function swap(html) {
    var doc = new DOMParser().parseFromString(html, 'text/html');
    var fresh = doc.querySelector('main[data-api]');
    if (!fresh || !main) return;
    var node = document.importNode(fresh, true);
    main.replaceWith(node);
    main = node;
    tick();
    document.documentElement.setAttribute('data-refreshed', String(Date.now()));
  }

  function refresh() {
    if (!main || busy) return;
    busy = true;
    fetch(main.getAttribute('data-api'), { cache: 'no-store', headers: { Accept: 'application/json' } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (text === null || text === last) return null;
        var first = last === null;
        last = text;
        if (first) return null;
        return fetch(location.href, { cache: 'no-store' })
          .then(function (r) { return r.ok ? r.text() : null; })
          .then(function (html) { if (html) swap(html); });
      })
      .catch(function () { /* the next tick tries again */ })
      .then(function () { busy = false; });
  }

  tick();
  refresh();
  setInterval(tick, 1000);
  setInterval(refresh, 1000);
})();
