import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LEAD_CHECK_MS, LEAD_SERVER_TIMEOUT_S, PostgresStore } from '../../deploy/controller/store-postgres.js';
import { startLink } from '../support/link.js';
import { postgresMissing, startPostgres, type Postgres } from '../support/postgres.js';
import { until } from '../support/wait.js';

// Leads (which replica drives rollouts) on a real PostgreSQL: one holder at a time, freed when
// the holder goes, and — the case that matters in a real network — when the holder is cut off
// from the database without a close: it must give the lead up quickly instead of hanging, and it
// must give it up before the server frees it for another replica, so two never both lead.

const noPostgres = postgresMissing();
if (noPostgres !== undefined) console.warn(`PostgreSQL store tests skipped: ${noPostgres}.`);

let postgres: Postgres | undefined;
beforeAll(async () => {
  if (noPostgres === undefined) postgres = await startPostgres();
}, 60_000);
afterAll(async () => {
  await postgres?.stop();
});

describe.skipIf(noPostgres !== undefined)('PostgreSQL store leads', () => {
  it('one holder at a time; freed when the holder closes its store', async () => {
    const url = await (postgres as Postgres).database();
    const [a, b] = await Promise.all([PostgresStore.connect(url), PostgresStore.connect(url)]);
    try {
      expect(await a.lead('rollouts')).toBe(true);
      expect(await b.lead('rollouts')).toBe(false);
      expect(await a.lead('rollouts')).toBe(true);
      // Another name is another lead.
      expect(await b.lead('attestations')).toBe(true);
      await a.close();
      await until(() => b.lead('rollouts'), 10_000);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('a holder cut off from the database gives the lead up within a check, and only then can another take it', async () => {
    const url = new URL(await (postgres as Postgres).database());
    const link = await startLink(Number(url.port));
    const viaLink = new URL(url);
    viaLink.port = String(link.port);
    const a = await PostgresStore.connect(viaLink.href);
    const b = await PostgresStore.connect(url.href);
    try {
      expect(await a.lead('rollouts')).toBe(true);
      expect(await b.lead('rollouts')).toBe(false);
      const cutAt = Date.now();
      link.cut({ serverNoticesAfterMs: LEAD_SERVER_TIMEOUT_S * 1000 });
      // A checks like the rollout tick (every 2 s, one at a time), B keeps trying to take over.
      const events: { who: 'a' | 'b'; held: boolean; at: number }[] = [];
      let stop = false;
      const ticks = async (who: 'a' | 'b', store: PostgresStore, everyMs: number): Promise<void> => {
        while (!stop) {
          const held = await store.lead('rollouts');
          events.push({ who, held, at: Date.now() - cutAt });
          await new Promise((r) => setTimeout(r, everyMs));
        }
      };
      const running = Promise.all([ticks('a', a, 2000), ticks('b', b, 250)]);
      await until(() => events.some((e) => e.who === 'b' && e.held), LEAD_SERVER_TIMEOUT_S * 1000 + 10_000);
      await new Promise((r) => setTimeout(r, LEAD_CHECK_MS + 2000)); // A keeps checking (and failing) a while longer
      stop = true;
      await running;
      const aLost = events.find((e) => e.who === 'a' && !e.held);
      const bTook = events.find((e) => e.who === 'b' && e.held);
      expect(aLost, JSON.stringify(events)).toBeDefined();
      // Within its next check plus that check's timeout: no hanging on a dead connection.
      expect(aLost?.at).toBeLessThanOrEqual(2000 + LEAD_CHECK_MS + 1000);
      // The lock is freed only when the server ends the session, after A has given it up.
      expect(bTook?.at).toBeGreaterThan(aLost?.at ?? Infinity);
      expect(bTook?.at).toBeGreaterThanOrEqual(LEAD_SERVER_TIMEOUT_S * 1000 - 100);
      expect(events.filter((e) => e.who === 'a' && e.held && e.at > (aLost?.at ?? 0))).toEqual([]);
    } finally {
      await link.close();
      await a.close();
      await b.close();
    }
  }, 60_000);
});
