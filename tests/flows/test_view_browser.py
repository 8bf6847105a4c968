"""`factory view` in a real browser: Debian's headless Chromium driven by Selenium through
chromium-driver (scripts/test.sh installs both). One server (uvicorn on 127.0.0.1, a free port)
and one browser for the whole file: open each page, follow a run to a sample, filter, page, run a
SQL query and follow a result to its sample, submit a review and see it in the report, and check
that hostile text stays text (no element made from it; the text is visible).

Skips when chromium, chromium-driver or selenium is missing (a developer machine); CI installs them.
"""

import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from flows.view import View, build_app
from storage import Lake
from tests.flows.test_view import IMG, RUN, SCRIPT, build_view_lake

pytestmark = pytest.mark.integration

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not (Path(CHROMEDRIVER).exists() and Path(CHROMIUM).exists()):
    pytest.skip("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver; scripts/test.sh does)",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
from selenium.webdriver.common.by import By  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    import uvicorn

    store = tmp_path_factory.mktemp("view-browser") / "store"
    build_view_lake(store)
    lake = Lake.open(str(store), create=False)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(View(lake, reviewer="tester"), host="127.0.0.1", port=port),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start in 20 s"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    lake.close()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="view-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    # Without the background-networking flags Chromium keeps calling home, which floods a closed network.
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _click(browser, by, value):
    _follow(browser, browser.find_element(by, value))


def _follow(browser, element):
    """Click something that loads a page and wait for the new page: Selenium's click returns
    once the click is sent, and a form's POST and redirect may not have landed yet."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = browser.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(browser, 30).until(expected_conditions.staleness_of(old))
    WebDriverWait(browser, 30).until(lambda b: b.execute_script("return document.readyState") == "complete")


def test_each_page_opens_with_its_heading(browser, base):
    for path, heading in (("/", "Runs"), ("/problems", "Problems"), ("/samples", "Samples"), ("/evals", "Evals"), ("/training", "Training runs"),
                          ("/sql", "SQL"), ("/review", "Review"), ("/datasets/ds-v/1", "Dataset ds-v@1"), ("/problems/p4", "Problem p4"),
                          ("/evals/e1", "student on math500")):
        browser.get(base + path)
        assert browser.find_element(By.TAG_NAME, "h1").text == heading, path
    browser.get(base + "/report")
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("Reasoning Factory report")


def test_follow_a_run_to_a_sample_filter_and_page(browser, base):
    browser.get(base + "/")
    _click(browser, By.LINK_TEXT, RUN)
    assert browser.find_element(By.TAG_NAME, "h1").text == f"Run {RUN}"
    _click(browser, By.LINK_TEXT, "synth")  # the funnel row of a source: its samples
    assert browser.current_url.endswith(f"/samples?run={RUN}&source=synth")
    links = browser.find_elements(By.CSS_SELECTOR, "a.sample")
    assert [a.text for a in links] == [f"s{n:02d}" for n in range(12, 20)]
    _follow(browser, links[0])
    assert browser.find_element(By.TAG_NAME, "h1").text == "Sample s12"
    # Filter with the form, then page with the links.
    browser.get(base + "/samples?n=5")
    browser.find_element(By.NAME, "status").send_keys("fail")
    _click(browser, By.CSS_SELECTOR, "#filters button")
    assert "status=fail" in browser.current_url
    assert [a.text for a in browser.find_elements(By.CSS_SELECTOR, "a.sample")] == ["s02", "s06", "s10", "s14", "s18"]
    browser.get(base + "/samples?n=5")
    _click(browser, By.ID, "next")
    assert [a.text for a in browser.find_elements(By.CSS_SELECTOR, "a.sample")] == [f"s{n:02d}" for n in range(5, 10)]
    _click(browser, By.ID, "prev")
    assert [a.text for a in browser.find_elements(By.CSS_SELECTOR, "a.sample")] == [f"s{n:02d}" for n in range(5)]


def test_sql_box_results_link_to_sample_pages(browser, base):
    browser.get(base + "/sql")
    box = browser.find_element(By.ID, "q")
    box.clear()
    box.send_keys("SELECT sample_id, completion_tokens FROM samples WHERE completion_tokens = 300 ORDER BY sample_id DESC")
    _click(browser, By.ID, "run-sql")
    cells = browser.find_elements(By.CSS_SELECTOR, "#result a")
    assert [c.text for c in cells] == ["s18", "s14", "s10", "s06", "s02"]
    _follow(browser, cells[0])
    assert browser.find_element(By.TAG_NAME, "h1").text == "Sample s18"


def test_hostile_text_stays_text(browser, base):
    browser.get(base + "/samples/s06")
    assert browser.find_elements(By.CSS_SELECTOR, "main script") == []
    assert browser.find_elements(By.CSS_SELECTOR, "img") == []
    assert browser.find_element(By.ID, "reasoning").text == f"Think {SCRIPT} {IMG}"
    assert browser.find_element(By.ID, "answer").text == IMG
    assert SCRIPT in browser.find_element(By.CSS_SELECTOR, "#verdicts td.reason").text
    # Had the script run, the alert would be open and this read would fail.
    assert browser.execute_script("return document.querySelectorAll('img, script').length") == 0


def test_math_is_typeset_and_the_text_as_written_is_one_click_away(browser, base):
    browser.get(base + "/samples/s05")
    fraction = browser.find_element(By.CSS_SELECTOR, "#reasoning math mfrac")
    assert fraction.size["height"] > 1.5 * browser.find_element(By.CSS_SELECTOR, "#reasoning mn").size["height"]  # stacked, not inline text
    assert browser.find_element(By.CSS_SELECTOR, "#reasoning strong").text == "2"
    written = browser.find_element(By.ID, "reasoning-written")
    assert not written.is_displayed()
    browser.find_element(By.CSS_SELECTOR, "#reasoning + details summary").click()
    assert written.is_displayed() and written.text == "Adding 1 and 1: $\\frac{1}{1}+1$ is **2**."


def test_submit_a_review_and_see_it_in_the_report(browser, base):
    browser.get(base + "/review")
    _click(browser, By.CSS_SELECTOR, "#sources tr:nth-child(2) button")  # gsm8k: sample for review
    assert "drawn=1" in browser.current_url
    drawn = browser.find_element(By.TAG_NAME, "h1").text.removeprefix("Sample ")
    verified = bool(browser.find_elements(By.CSS_SELECTOR, "#verdicts td.pass"))  # the fixture has one check per sample
    browser.find_element(By.NAME, "note").send_keys("looks fine")
    _click(browser, By.ID, "label-right")
    assert "drawn=1" in browser.current_url  # straight on to the next draw
    browser.get(base + f"/samples/{drawn}")
    row = browser.find_element(By.CSS_SELECTOR, "#reviews tr:nth-child(2)").text
    assert "tester" in row and "right" in row and "seed 0" in row and "looks fine" in row
    browser.get(base + "/report")
    section = browser.find_element(By.ID, "reviews").text
    assert "Verifier agreement with reviewers" in section and f"({int(verified)} of 1)" in section
