// The billing console in headless Chromium, driven by Playwright: what a
// person sees and does, checked on the rendered pages. Started by the
// suite's console test (tests/suite/console.rs), which runs the services,
// prepares a tenant and checks the wallet afterwards; the figures expected
// come from it in the environment. Exits non-zero naming the first check
// that failed.
"use strict";

const assert = require("node:assert/strict");
const path = require("node:path");
const { chromium } = require("playwright-core");

const base = process.env.CONSOLE_URL;
const account = process.env.ACCOUNT_ID;
const externalId = process.env.EXTERNAL_ID;
const adminKey = process.env.ADMIN_KEY;
const readOnlyKey = process.env.READ_ONLY_KEY;
const available = process.env.AVAILABLE;
const invoiceId = process.env.INVOICE_ID;
const invoiceTotal = process.env.INVOICE_TOTAL;
const screenshots = process.env.SCREENSHOTS || "";

async function shot(page, name) {
  if (screenshots) {
    await page.screenshot({ path: path.join(screenshots, `${name}.png`), fullPage: true });
  }
}

async function signIn(context, key) {
  const page = await context.newPage();
  await page.goto(`${base}/accounts`);
  assert.equal(new URL(page.url()).pathname, "/login", "without a session the console asks to sign in");
  await page.getByLabel("API key").fill(key);
  await page.getByRole("button", { name: "Sign in" }).click();
  assert.equal(new URL(page.url()).pathname, "/accounts", "signed in, the accounts");
  return page;
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  try {
    const admin = await browser.newContext({ viewport: { width: 1100, height: 900 } });
    const login = await admin.newPage();
    await login.goto(`${base}/login`);
    await shot(login, "login");
    await login.close();

    const page = await signIn(admin, adminKey);
    await page.getByLabel(/external id/).fill(externalId);
    await page.getByRole("button", { name: "Find" }).click();
    await shot(page, "accounts");
    await page.getByRole("link", { name: externalId }).click();
    assert.equal(new URL(page.url()).pathname, `/accounts/${account}`);

    // The figures the wallet reports, the cap's progress, the usage chart.
    const figures = await page.locator("#balance + ul.figures").innerText();
    assert.match(figures, new RegExp(`Available\\s+${available.replace(".", "\\.")} USD`), figures);
    const cap = await page.locator("#cap-progress").innerText();
    assert.match(cap, /Spent 50% of the cap/, cap);
    assert.match(cap, /50% \(reached\)/, cap);
    const bars = await page.locator('#usage-chart rect[fill="#1F6FB4"]').count();
    assert.equal(bars, 1, "one bar for the one day with usage");
    await shot(page, "account");
    const mode = await page.locator("#billing-mode").innerText();
    assert.match(mode, /Billing: Prepaid credits/, mode);
    // The account's opening grant is its first refill, with the balance after it.
    const refill = await page.locator("#refill-history tbody tr").first().innerText();
    assert.match(refill, /grant/, refill);
    assert.match(refill, /100\.00\s+100\.00/, refill);

    // Courtesy credits through the form.
    await page.getByLabel("Amount", { exact: true }).fill("10");
    await page.getByLabel("Kind").selectOption("courtesy");
    await page.getByLabel("Note (optional)").fill("outage on the 3rd");
    await page.getByRole("button", { name: "Grant", exact: true }).click();
    await page.getByText("Credits granted.").waitFor();
    const after = await page.locator("#balance + ul.figures").innerText();
    assert.match(after, /Courtesy credits\s+10(\.0+)? USD/, after);
    const rows = await page.locator("#entries tbody tr").count();
    assert.equal(rows, 3, "the paid grant, the usage and the courtesy grant");
    // The courtesy grant is the newest refill, the balance after it what the figures say.
    const newest = await page.locator("#refill-history tbody tr").first().innerText();
    const expected = (Number(available) + 10).toFixed(2).replace(".", "\\.");
    assert.match(newest, new RegExp(`10\\.00\\s+${expected}`), newest);

    // A form the console did not render (no CSRF token) is refused.
    const forged = await admin.request.post(`${base}/accounts/${account}/grants`, {
      form: { csrf: "forged", idempotency_key: "forged-1", amount: "1", kind: "courtesy" },
      maxRedirects: 0,
    });
    assert.equal(forged.status(), 403, "a forged form");

    // The statement downloads as CSV.
    const csv = await admin.request.get(`${base}/accounts/${account}/statement.csv`);
    assert.equal(csv.status(), 200);
    assert.match(await csv.text(), /^section,date,sequence,kind,amount,balance_after/);

    // Usage by meter, and the same as CSV: the day's tokens.
    await page.getByRole("link", { name: /Usage by meter and dimension/ }).click();
    const usageCsv = await admin.request.get(`${page.url()}${page.url().includes("?") ? "&" : "?"}format=csv`);
    assert.equal(usageCsv.status(), 200);
    assert.match(await usageCsv.text(), /tokens/);

    // An invoice prints with the total invoicing computed.
    await page.goto(`${base}/invoices/${invoiceId}`);
    const total = await page.locator("main").innerText();
    assert.ok(total.includes(`${invoiceTotal} USD`), total);

    // The report schedule, recipients one address per line.
    await page.getByRole("link", { name: "Reports" }).click();
    await page.getByLabel("Billing contact (e-mail)").fill("billing@example.com");
    await page.getByLabel(/one address per line/).fill("finance@example.com\ncfo@example.com");
    await page.getByRole("button", { name: "Save the schedule" }).click();
    await page.getByText("Schedule saved.").waitFor();
    const schedule = await page.locator("#schedule").innerText();
    assert.match(schedule, /billing@example\.com and finance@example\.com, cfo@example\.com/, schedule);

    // Billing alerts to two addresses, one per line.
    await page.getByLabel(/none stops the alerts/).fill("ops@example.com\n\nalerts@example.com");
    await page.getByRole("button", { name: "Save the recipients" }).click();
    await page.getByText("Alert recipients saved.").waitFor();
    const alerts = await page.locator("#alert-recipients").innerText();
    assert.match(alerts, /Alerts go to ops@example\.com, alerts@example\.com\./, alerts);
    await shot(page, "reports");

    await page.getByRole("button", { name: "Sign out" }).click();
    assert.equal(new URL(page.url()).pathname, "/login");
    await admin.close();

    // A read-only key: the same page, no form that changes anything.
    const reader = await browser.newContext({ viewport: { width: 1100, height: 900 } });
    const readPage = await signIn(reader, readOnlyKey);
    await readPage.goto(`${base}/accounts/${account}`);
    const forms = await readPage.locator('form[method="post"]').evaluateAll((all) => all.map((form) => form.getAttribute("action")));
    assert.deepEqual(forms, ["/logout"], "only the sign-out form");
    await shot(readPage, "account-read-only");
    await reader.close();
  } finally {
    await browser.close();
  }
}

main().then(
  () => console.log("console in Chromium: every check passed"),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
