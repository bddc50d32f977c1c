"""An independent re-statement of hendrycks/test evaluate.py's prompt construction (format_subject,
format_example, gen_prompt), used as the oracle for MMLU prompts. Written from the reference
protocol; it shares no code with xverse_eval."""
import pandas as pd

CHOICES = ["A", "B", "C", "D"]


def format_subject(subject):
    return "".join(" " + entry for entry in subject.split("_"))


def format_example(df, idx, include_answer=True):
    prompt = df.iloc[idx, 0]
    k = df.shape[1] - 2
    for j in range(k):
        prompt += "\n{}. {}".format(CHOICES[j], df.iloc[idx, j + 1])
    prompt += "\nAnswer:"
    if include_answer:
        prompt += " {}\n\n".format(df.iloc[idx, k + 1])
    return prompt


def gen_prompt(train_df, subject, k=-1):
    prompt = "The following are multiple choice questions (with answers) about {}.\n\n".format(format_subject(subject))
    if k == -1:
        k = train_df.shape[0]
    for i in range(k):
        prompt += format_example(train_df, i)
    return prompt


def prompt_for(data_dir, subject, index, k=5):
    dev = pd.read_csv(f"{data_dir}/mmlu/data/dev/{subject}_dev.csv", header=None)[:k]
    test = pd.read_csv(f"{data_dir}/mmlu/data/test/{subject}_test.csv", header=None)
    return gen_prompt(dev, subject, k) + format_example(test, index, include_answer=False)
