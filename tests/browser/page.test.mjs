// The live page in a real browser: start `tidegate demo`, open the page in headless Chromium,
// and check what a newcomer should see — topics, each device's latest values (a quiet one
// marked), the messages stored before the page opened, a growing live list, a message they
// publish showing up within 2 s, and charts with data points. Leaves a screenshot in target/.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import net from "node:net";
import { chromium } from "playwright-core";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const bin = process.env.TIDEGATE_BIN || join(root, "target", "debug", "tidegate");

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

async function until(pred, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await pred().catch(() => undefined);
    if (v) return v;
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("the demo's live page shows topics, live messages, a published message and charts", async () => {
  const dir = mkdtempSync(join(tmpdir(), "tidegate-page-"));
  const [http, mqtt] = [await freePort(), await freePort()];
  const started = Date.now();
  const demo = spawn(bin, ["demo", "--listen", `127.0.0.1:${http}`, "--broker-port", String(mqtt), "--db", join(dir, "demo.db"), "--devices", "3", "--rate", "4"], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  demo.stdout.on("data", (d) => (out += d));
  demo.stderr.on("data", (d) => (out += d));
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const base = `http://127.0.0.1:${http}`;
    await until(async () => (await fetch(base + "/api/v1/topics")).ok, 20000, "the demo API\n" + out);
    const firstStored = await until(async () => {
      const r = await (await fetch(base + "/api/v1/messages?limit=1")).json();
      return r.messages.length ? Date.now() : undefined;
    }, 20000, "a first stored message");
    console.log(`time from demo start to first stored message: ${firstStored - started} ms`);
    // A sensor that last reported ten minutes ago (its payload says when it measured).
    const tenMinAgo = new Date(Date.now() - 10 * 60 * 1000).toISOString();
    execFileSync("mosquitto_pub", ["-p", String(mqtt), "-q", "1", "-t", "demo/sensors/sensor-quiet/telemetry", "-m", JSON.stringify({ temp: 3.5, ts: tenMinAgo })]);

    for (const [width, height] of [[1280, 800], [390, 844]]) {
      // A message stored before the page opens is in its list at once, not only later ones.
      const before = "stored-before-" + Math.random().toString(36).slice(2);
      execFileSync("mosquitto_pub", ["-p", String(mqtt), "-q", "1", "-t", "demo/before", "-m", before]);
      await until(async () => {
        const r = await (await fetch(base + "/api/v1/messages?topic=demo/before&limit=5")).json();
        return r.messages.some((m) => m.payload === before);
      }, 5000, "the message published before the page opened");
      const page = await browser.newPage({ viewport: { width, height } });
      await page.goto(base + "/");
      await page.waitForSelector(`#live li:has-text("${before}")`, { timeout: 3000 });
      await page.waitForSelector("#topics tr", { timeout: 10000 });
      await page.waitForFunction(() => document.querySelectorAll("#chartlist .chart").length >= 3, null, { timeout: 15000 }).catch(() => {});
      const topics = await page.locator("#topics tr").allTextContents();
      assert.ok(topics.some((t) => t.includes("demo/sensors/")), "topics: " + topics);
      // The header's count is the table's last-minute column added up (both set from one read).
      const [rate, perMin] = await page.evaluate(() => [
        document.getElementById("rate").textContent,
        [...document.querySelectorAll("#topics tr")].reduce((s, tr) => s + Number(tr.children[2].textContent.replace(/\D/g, "")), 0),
      ]);
      assert.equal(rate, perMin.toLocaleString("en-US") + " in the last minute");

      // Latest values: every field of every device as tidegate stored it (the device from the
      // topic, a text reading as text), read from the API on load rather than from the stream.
      await page.waitForFunction(() => document.querySelectorAll("#latest tr").length >= 12, null, { timeout: 5000 });
      const latest = await page.locator("#latest tr").evaluateAll((trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
      for (const device of ["sensor-01", "sensor-02", "sensor-03"]) {
        const mine = latest.filter(([d]) => d === device);
        assert.deepEqual(mine.map(([, f]) => f), ["battery", "hum", "status", "temp"], "latest: " + JSON.stringify(latest));
        const [, , status] = mine.find(([, f]) => f === "status");
        assert.ok(["ok", "low-battery"].includes(status), "status: " + status);
        const [, , temp, age] = mine.find(([, f]) => f === "temp");
        assert.ok(Number.isFinite(Number(temp)), "temp: " + temp);
        assert.match(age, /^(now|\d+ s)$/, "a live sensor's age: " + age);
      }
      // The quiet sensor's value, with its age, marked stale.
      const quiet = page.locator("#latest tr", { hasText: "sensor-quiet" });
      assert.deepEqual(await quiet.locator("td").allTextContents(), ["sensor-quiet", "temp", "3.5", "10 min"]);
      assert.equal(await quiet.getAttribute("class"), "stale");
      assert.equal(await page.locator("#latest tr.stale").count(), 1, "only the quiet sensor is stale");

      const n1 = await page.locator("#live li").count();
      await page.waitForFunction((n) => document.querySelectorAll("#live li").length > n + 3, n1, { timeout: 10000 });
      // Newest first, each message once, whether read on load or live.
      const ids = await page.locator("#live li").evaluateAll((lis) => lis.map((li) => Number(li.dataset.id)));
      assert.deepEqual(ids, [...ids].sort((a, b) => b - a), "newest first: " + ids);
      assert.equal(new Set(ids).size, ids.length, "each message once: " + ids);

      const unique = "hello-" + Math.random().toString(36).slice(2);
      execFileSync("mosquitto_pub", ["-p", String(mqtt), "-t", "demo/hello", "-m", unique]);
      const t0 = Date.now();
      await page.waitForSelector(`#live li:has-text("${unique}")`, { timeout: 2000 });
      console.log(`published message visible on the page after ${Date.now() - t0} ms (${width}px)`);

      // A chart per numeric field; the temperature chart has lines with data points.
      await page.waitForFunction(
        () => [...document.querySelectorAll('#chartlist [data-field="temp"] polyline')].some((p) => Number(p.dataset.points) >= 2),
        null,
        { timeout: 15000 },
      );
      const charts = await page.locator("#chartlist .chart h2").allTextContents();
      for (const f of ["temp", "hum", "battery"]) assert.ok(charts.includes(f), "charts: " + charts);
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 1, `page wider than the ${width}px screen by ${overflow}px`);
      mkdirSync(join(root, "target"), { recursive: true });
      await page.screenshot({ path: join(root, "target", `live-page-${width}.png`), fullPage: true });
      await page.close();
    }
  } finally {
    await browser.close();
    demo.kill("SIGTERM");
    await new Promise((r) => demo.on("exit", r));
  }
  assert.match(out, /stopped cleanly/);
});
