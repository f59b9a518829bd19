// The status page: reads api/state every 2 s and draws it.
//
// Every string that comes from etcd (ids, reasons, labels, addresses) goes into the DOM through
// textContent or an attribute, never as markup: a request id or an engine label is data, and a
// `<img onerror=…>` in one must show as text. The page's Content-Security-Policy forbids inline
// scripts as a second line of defence.
'use strict';

(function () {
  const REFRESH_MS = 2000;
  // A health key older than this (three of the leader's default rounds) is shown as stale.
  const STALE_HEALTH_MS = 6000;

  const $ = (id) => document.getElementById(id);

  // An element with a class and a text, both optional.
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function td(cls, text) {
    return el('td', cls, text);
  }

  // An id's class: a short one never wraps; a long one (up to 253 bytes) may break anywhere
  // rather than stretch the table.
  function idClass(id) {
    return String(id).length <= 24 ? 'id short' : 'id';
  }

  // Replaces a node's children with `children` at once (one reflow per table).
  function fill(node, children) {
    const frag = document.createDocumentFragment();
    for (const c of children) frag.appendChild(c);
    node.replaceChildren(frag);
  }

  function num(v, digits) {
    if (typeof v !== 'number' || !isFinite(v)) return '–';
    const d = digits === undefined ? 2 : digits;
    return String(Number(v.toFixed(d)));
  }

  // MB (MiB, as citadel counts memory) in the largest unit that reads well.
  function mem(mb) {
    if (typeof mb !== 'number' || !isFinite(mb)) return '–';
    if (mb >= 1024 * 1024) return num(mb / (1024 * 1024), 1) + ' TiB';
    if (mb >= 1024) return num(mb / 1024, 1) + ' GiB';
    return num(mb, 0) + ' MB';
  }

  // Reserved and total memory in the unit the total reads best in: "73.5 / 136 GiB".
  function memPair(reserved, total) {
    if (typeof total !== 'number' || !isFinite(total)) return '–';
    const [div, unit] = total >= 1024 * 1024 ? [1024 * 1024, 'TiB'] : total >= 1024 ? [1024, 'GiB'] : [1, 'MB'];
    return num(reserved / div, 1) + ' / ' + num(total / div, 1) + ' ' + unit;
  }

  function ago(ms) {
    if (typeof ms !== 'number' || !isFinite(ms)) return 'unknown';
    const s = ms / 1000;
    if (s < 10) return num(s, 1) + 's ago';
    if (s < 120) return Math.round(s) + 's ago';
    if (s < 7200) return Math.floor(s / 60) + 'm ' + Math.round(s % 60) + 's ago';
    return Math.floor(s / 3600) + 'h ' + Math.floor((s % 3600) / 60) + 'm ago';
  }

  // Milliseconds from an RFC 3339 time to `now` (the replica's clock, from the same answer:
  // the browser's own clock may be off).
  function msSince(t, now) {
    const a = Date.parse(t);
    const b = Date.parse(now);
    return isFinite(a) && isFinite(b) ? Math.max(0, b - a) : NaN;
  }

  // A time as the CLI shows it, an age ("12s ago"), with the time itself as its title.
  function when(cls, t, now) {
    const e = el('span', cls, t ? ago(msSince(t, now)) : '–');
    if (t) e.title = t;
    return e;
  }

  function pct(used, total) {
    if (!(total > 0) || !(used > 0)) return 0;
    return Math.min(100, Math.max(0, (used / total) * 100));
  }

  // A bar: the reserved share filled, live use (if known) as a tick.
  function bar(reserved, total, live) {
    const b = el('div', 'bar');
    const p = pct(reserved, total);
    const f = el('div', 'fill' + (p >= 90 ? ' bad' : p >= 70 ? ' warn' : ''));
    f.style.width = p.toFixed(1) + '%';
    b.appendChild(f);
    if (typeof live === 'number' && isFinite(live) && total > 0) {
      const t = el('div', 'live');
      t.style.left = 'calc(' + pct(live, total).toFixed(1) + '% - 1px)';
      t.title = 'live use';
      b.appendChild(t);
    }
    return b;
  }

  function statusBadge(status) {
    const known = ['placed', 'unschedulable', 'preempted', 'failed', 'invalid', 'lost', 'pending', 'queued', 'exited'];
    const cls = known.includes(status) ? ' s-' + status : '';
    return el('span', 'status' + cls, status);
  }

  function emptyRow(cols, text) {
    const tr = el('tr', 'empty');
    const c = td('', text);
    c.colSpan = cols;
    tr.appendChild(c);
    return tr;
  }

  // While etcd does not answer, everything shown is as of its last answer: the page is greyed,
  // the role is only what it was, and a banner says since when. Returns the banner's text.
  function renderHeader(s) {
    const r = s.replica;
    stale(!r.healthy);
    $('replica-id').textContent = r.id;
    const role = $('role');
    role.textContent = (r.leads ? 'leader' : 'standby') + (r.healthy ? '' : ' · stale');
    role.className = 'role' + (r.healthy ? (r.leads ? ' leader' : '') : ' stale');
    role.title = r.healthy ? '' : 'etcd does not answer: this replica ' +
      (r.leads ? 'may no longer lead (its lease runs out unrenewed)' : 'cannot tell who leads now');
    $('revision').textContent = 'prefix ' + r.prefix + ' · revision ' + r.revision +
      (r.lag > 0 ? ' (etcd ' + r.etcd_revision + ', lag ' + r.lag + ')' : '');
    const ready = $('ready');
    ready.textContent = r.ready ? 'ready' : 'not ready';
    ready.className = 'pill ' + (r.ready ? 'ok' : 'bad');
    ready.title = r.ready_reason;
    const healthy = $('healthy');
    healthy.textContent = r.healthy ? 'etcd ok' : 'etcd down';
    healthy.className = 'pill ' + (r.healthy ? 'ok' : 'bad');
    healthy.title = r.health_reason;
    $('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
    document.title = (r.healthy ? '' : '(stale) ') + (r.ready ? '' : '(not ready) ') + 'citadel · ' + r.id;
    if (r.healthy) return '';
    if (!r.etcd_answered_at) {
      return 'etcd has not answered yet (' + r.health_reason + '): nothing below is known.';
    }
    return 'etcd unreachable: the numbers below are stale, as of its last answer at ' +
      new Date(Date.parse(r.etcd_answered_at)).toLocaleTimeString() + ' (' + ago(r.etcd_silent_ms) +
      '). ' + r.health_reason;
  }

  function stale(on) {
    document.body.classList.toggle('stale', on);
  }

  function renderStats(s) {
    const c = s.cluster;
    $('stat-engines').textContent = String(c.engines);
    $('stat-engines-sub').textContent = s.engines_total > c.engines
      ? (s.engines_total - c.engines) + ' invalid key(s) ignored' : c.placements + ' placements';
    $('stat-cpus').textContent = num(c.reserved_cpus) + ' / ' + num(c.cpus);
    fill($('stat-cpus-bar'), [bar(c.reserved_cpus, c.cpus)]);
    $('stat-memory').textContent = memPair(c.reserved_memory_mb, c.memory_mb);
    fill($('stat-memory-bar'), [bar(c.reserved_memory_mb, c.memory_mb)]);
    $('stat-requests').textContent = String(c.requests);
    const attention = s.request_counts
      .filter((x) => ['unschedulable', 'preempted', 'failed', 'invalid', 'lost'].includes(x.status) && x.count > 0)
      .map((x) => x.count + ' ' + x.status);
    $('stat-requests-sub').textContent = attention.length ? attention.join(', ') : 'none needs a look';
    $('stat-queued').textContent = String(c.queued);
    $('stat-lag').textContent = 'cache lag ' + s.replica.lag + ' revision(s)';
  }

  function renderElection(s) {
    const leader = s.candidates.find((c) => c.leads);
    const box = $('leader');
    if (leader) {
      const name = el('span', 'name', leader.id || '(not a citadel replica)');
      // A leader of a release before `leads_since` says only when it began campaigning.
      const since = leader.leads_since
        ? [el('span', 'muted', ' · leads since '), when('since', leader.leads_since, s.generated_at)]
        : [el('span', 'muted', ' · campaigning since '), when('since', leader.since, s.generated_at)];
      const parts = [el('span', 'muted', 'Leader: '), name, ...since];
      if (!s.replica.healthy) parts.push(el('span', 'tag stale', 'as of etcd\'s last answer'));
      fill(box, parts);
    } else {
      fill(box, [el('span', 'tag bad', 'no leader')]);
    }
    const rows = s.candidates.map((c) => {
      const tr = el('tr', c.leads ? 'leads' : '');
      const who = td('id', c.id || '(not a citadel replica)');
      if (c.leads) who.appendChild(el('span', 'tag', 'leads'));
      if (c.lease === '0') who.appendChild(el('span', 'tag bad', 'no lease: blocks every election'));
      const since = td('small');
      since.appendChild(when('since', c.since, s.generated_at));
      tr.append(who, td('mono', c.addr || '–'), since, td('mono small', c.lease));
      tr.title = 'key ' + c.key + ', create revision ' + c.create_revision;
      return tr;
    });
    fill($('candidates'), rows.length ? rows : [emptyRow(4, 'no candidate: no replica campaigns')]);
  }

  function renderRequests(s) {
    fill($('request-counts'), s.request_counts.map((x) => {
      const chip = el('span', 'chip' + (x.count ? '' : ' zero'));
      chip.append(statusBadge(x.status), el('b', '', x.count));
      return chip;
    }));
    const rows = [];
    for (const g of s.requests) {
      for (const r of g.shown) {
        const tr = el('tr');
        tr.append(td('', ''), td(idClass(r.id), r.id), td('reason', r.reason || (g.status === 'queued' ? 'waiting for the leader' : '')),
          td('mono nowrap', r.engine || '–'));
        tr.firstChild.appendChild(statusBadge(g.status));
        rows.push(tr);
      }
      if (g.total > g.shown.length) {
        const more = el('tr', 'more');
        const c = td('', '… and ' + (g.total - g.shown.length) + ' more ' + g.status);
        c.colSpan = 4;
        more.appendChild(c);
        rows.push(more);
      }
    }
    fill($('requests'), rows.length ? rows : [emptyRow(4, 'no requests')]);
  }

  function healthCell(e) {
    const c = td('wrap');
    const h = e.health;
    if (!h) {
      c.appendChild(el('span', 'health none', 'no health key'));
      c.title = 'no leader runs with --docker, or the engine stopped answering';
      return c;
    }
    const stale = !(h.age_ms <= STALE_HEALTH_MS);
    c.appendChild(el('span', 'health ' + (stale ? 'stale' : 'ok'), ago(h.age_ms)));
    c.appendChild(el('div', 'muted small',
      'live ' + num(h.live_cpus) + ' cpu · ' + mem(h.live_memory_mb) + ' · ' + h.containers + ' running'));
    c.title = 'last contact ' + h.last_contact + ' by ' + h.checked_by;
    return c;
  }

  function meter(reserved, total, live, text) {
    const c = td('meter');
    c.append(el('div', 'text', text), bar(reserved, total, live));
    return c;
  }

  function renderEngines(s) {
    const hint = s.engines_total > s.engines.length
      ? s.engines.length + ' of ' + s.engines_total + ' shown'
      : s.engines_total + ' registered';
    $('engines-hint').textContent = hint;
    const rows = s.engines.map((e) => {
      const tr = el('tr');
      const name = td('wrap');
      name.append(el('div', idClass(e.id), e.id), el('div', 'muted small mono', e.addr || ''));
      if (e.cordoned) name.firstChild.appendChild(el('span', 'tag warn', 'cordoned'));
      if (e.invalid) {
        const why = td('invalid', 'invalid, ignored: ' + e.invalid);
        why.colSpan = 5;
        tr.append(name, why);
        return tr;
      }
      const labels = td('wrap');
      const box = el('div', 'labels');
      for (const l of e.labels) box.appendChild(el('span', 'label-chip', l));
      labels.appendChild(box);
      const live = e.health || {};
      tr.append(
        name,
        labels,
        meter(e.reserved_cpus, e.cpus, live.live_cpus, num(e.reserved_cpus) + ' / ' + num(e.cpus)),
        meter(e.reserved_memory_mb, e.memory_mb, live.live_memory_mb,
          memPair(e.reserved_memory_mb, e.memory_mb)),
        td('num', e.placements),
        healthCell(e),
      );
      return tr;
    });
    fill($('engines'), rows.length ? rows : [emptyRow(6, 'no engines registered (citadel engine add …)')]);
  }

  function renderRecent(s) {
    const rows = s.recent.map((d) => {
      const tr = el('tr');
      const decided = td('nowrap small');
      decided.appendChild(when('decided', d.decided_at, s.generated_at));
      tr.append(td('num mono', d.revision), decided, td(idClass(d.id), d.id), td('', ''), td('mono nowrap', d.engine || '–'),
        td('', d.scheduler || '–'), td('reason', d.reason));
      tr.children[3].appendChild(statusBadge(d.status));
      return tr;
    });
    fill($('recent'), rows.length ? rows : [emptyRow(7, 'no decisions yet')]);
  }

  // Draws the page; returns the banner's text ('' for none).
  function render(s) {
    const warning = renderHeader(s);
    renderStats(s);
    renderElection(s);
    renderRequests(s);
    renderEngines(s);
    renderRecent(s);
    return warning;
  }

  function banner(text) {
    const b = $('banner');
    b.textContent = text || '';
    b.hidden = !text;
  }

  async function refresh() {
    try {
      const r = await fetch('api/state', { cache: 'no-store' });
      if (!r.ok) throw new Error('HTTP ' + r.status);
      banner(render(await r.json()));
    } catch (e) {
      // The replica itself does not answer: what it said last is all there is.
      stale(true);
      $('role').className = 'role stale';
      banner('Cannot read this replica\'s state (' + e.message + '); showing the last one read, at ' +
        $('updated').textContent.replace('updated ', '') + '. Retrying…');
    } finally {
      setTimeout(refresh, REFRESH_MS);
    }
  }

  refresh();
})();
