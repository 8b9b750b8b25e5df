"""The console in a real browser: Debian's chromium, headless, driven by selenium.

Run by scripts/e2e-console, which starts switcher-api with two agents and passes:
  SWITCHER_URL, ADMIN_KEY, AGENT_KEY   the running service and its keys
  SHOTS                                directory for the screenshots
  CHROMIUM, CHROMEDRIVER               the browser and its driver (Debian's packages)

Logs in with a wrong key (the page shows the API's message), then with the admin key
(typed, submitted with Enter), sees agent support-bot, switches it, rolls it back, and
checks through the API that both happened. Screenshots at desktop and phone sizes.
"""

import json
import os
import sys
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

URL = os.environ["SWITCHER_URL"]
ADMIN_KEY = os.environ["ADMIN_KEY"]
AGENT_KEY = os.environ["AGENT_KEY"]
SHOTS = os.environ["SHOTS"]
AGENT = "support-bot"


def log(message):
    print("console-check: " + message, file=sys.stderr, flush=True)


def api(method, path, key, body=None):
    """(status, JSON body) of one call to the service."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(URL + path, data=data, method=method)
    request.add_header("Authorization", "Bearer " + key)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def active_model():
    status, body = api("GET", "/api/active?agent_id=" + AGENT, AGENT_KEY)
    assert status == 200, body
    return body["model_name"]


def browser():
    options = Options()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1600",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    return driver


def shot(driver, name):
    path = os.path.join(SHOTS, name)
    driver.save_screenshot(path)
    log("screenshot " + path)


def agent_row(driver):
    return driver.find_element(By.CSS_SELECTOR, 'tr[data-agent="%s"]' % AGENT)


def row_model(driver):
    return agent_row(driver).find_elements(By.TAG_NAME, "td")[2].text


def main():
    driver = browser()
    # Tables are redrawn after each action: an element read mid-redraw is simply read again.
    wait = WebDriverWait(driver, 20, ignored_exceptions=[StaleElementReferenceException])
    try:
        driver.get(URL + "/console")
        key_field = wait.until(EC.visibility_of_element_located((By.ID, "admin-key")))
        assert driver.switch_to.active_element == key_field, "the key field has the focus"

        # A wrong key: the page shows exactly what the API says.
        _, wrong = api("GET", "/admin/profiles", "not-the-admin-key")
        expected = wrong["error"]["message"]
        key_field.send_keys("not-the-admin-key", Keys.ENTER)
        message = wait.until(EC.visibility_of_element_located((By.ID, "message")))
        wait.until(lambda d: message.text == expected)
        log("a wrong key shows: " + message.text)
        assert driver.find_element(By.ID, "app").is_displayed() is False
        shot(driver, "console-login-error.png")

        # The admin key, typed and submitted from the keyboard.
        driver.find_element(By.ID, "admin-key").send_keys(ADMIN_KEY, Keys.ENTER)
        wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, 'tr[data-agent="%s"]' % AGENT)))
        wait.until(lambda d: row_model(d) == "gpt-4o-mini")
        assert driver.switch_to.active_element.get_attribute("id") == "agents-title"
        stored = driver.execute_script("return sessionStorage.getItem('switcher-admin-key')")
        assert stored == ADMIN_KEY, "the key is in sessionStorage"
        assert not driver.execute_script("return localStorage.length"), "nothing in localStorage"
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#requests-table tbody tr")) > 0)
        shot(driver, "console-agents.png")

        # Switch it.
        Select(agent_row(driver).find_element(By.TAG_NAME, "select")).select_by_visible_text(
            "openai-main / gpt-4o"
        )
        agent_row(driver).find_element(By.XPATH, ".//button[text()='Switch']").click()
        wait.until(lambda d: row_model(d) == "gpt-4o")
        assert active_model() == "gpt-4o", "the switch reached the API"
        _, history = api("GET", "/api/history?agent_id=" + AGENT, AGENT_KEY)
        switch_id = history["data"][0]["id"]
        assert history["data"][0]["to"]["model_name"] == "gpt-4o"
        log("switched to gpt-4o (switch %d)" % switch_id)

        # Roll it back from its history.
        agent_row(driver).find_element(By.XPATH, ".//button[text()='History']").click()
        wait.until(EC.visibility_of_element_located((By.ID, "history")))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-switch="%d"]' % switch_id))
        driver.find_element(By.ID, "undo").click()
        wait.until(lambda d: row_model(d) == "gpt-4o-mini")
        assert active_model() == "gpt-4o-mini", "the rollback reached the API"
        _, history = api("GET", "/api/history?agent_id=" + AGENT, AGENT_KEY)
        latest = history["data"][0]
        assert latest["rollback_of"] == switch_id, latest
        assert latest["to"]["model_name"] == "gpt-4o-mini", latest
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-switch="%d"]' % latest["id"]))
        log("rolled back (switch %d undid %d)" % (latest["id"], switch_id))
        driver.execute_script("document.getElementById('history').scrollIntoView()")
        shot(driver, "console-history.png")

        # An action the API refuses shows the API's message: a model without a name.
        _, refusal = api(
            "POST", "/admin/models", ADMIN_KEY, {"profile_name": "openai-main", "model_name": ""}
        )
        Select(driver.find_element(By.ID, "model-profile")).select_by_visible_text("openai-main")
        driver.find_element(By.ID, "model-name").clear()
        driver.find_element(By.XPATH, "//form[@id='model-form']//button").click()
        wait.until(lambda d: d.find_element(By.ID, "message").text == refusal["error"]["message"])
        log("a refused action shows: " + refusal["error"]["message"])

        # A phone-sized screen.
        driver.set_window_size(390, 1400)
        driver.execute_script("window.scrollTo(0, 0)")
        shot(driver, "console-phone.png")

        problems = [
            entry["message"]
            for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and "favicon" not in entry["message"]
        ]
        # The API's refusals above (401, 400) are logged by the browser as failed loads;
        # nothing else may be (a script error, a Content-Security-Policy refusal).
        unexpected = [p for p in problems if "the server responded with a status of" not in p]
        assert not unexpected, "browser errors (a Content-Security-Policy refusal?): %s" % unexpected
        log("all checks passed")
    except Exception:
        try:
            shot(driver, "console-failure.png")
            log("page text at failure:\n" + driver.find_element(By.TAG_NAME, "body").text)
        except Exception:
            pass
        raise
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
